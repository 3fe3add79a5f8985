"""policy explain: what the residency policy decides for one record, action and region, and why.

The policy comes from a pack file (--pack: its regions are the pack's), a cluster config
(--cluster-config: the pack it names, and the namespace scopes), or by default the coordinator's
topology, which carries the pack in force. Without a pack only the namespace scopes apply, so
the answer depends on the namespace: --namespace is then required. With a namespace and a pack,
both layers decide, as the nodes do.

Exit codes: 0 allowed (also allowed with fields redacted), 1 refused, 2 bad input.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from domicile.cli import connect
from domicile.cli.output import print_json
from domicile.client import Client, RetryPolicy, Topology
from domicile.cluster import ClusterSpec, load_cluster
from domicile.errors import InvalidArgument
from domicile.model import Classification
from domicile.policy import Decision, PlacementPolicy, RecordFacts
from domicile.policy.engine import JurisdictionPolicy, check_action, check_facts
from domicile.policy.pack import load_pack
from domicile.policy.select import pack_of, policy_for_cluster

EXIT_ALLOWED = 0
EXIT_REFUSED = 1


@dataclass(frozen=True)
class PolicySource:
    policy: PlacementPolicy
    regions: tuple[str, ...]
    version: str
    # For people: where the policy came from.
    description: str


def cluster_from_topology(topology: Topology, coordinator: str) -> ClusterSpec:
    return ClusterSpec(
        regions=topology.regions,
        namespaces=topology.namespaces,
        policy_version=topology.policy_version,
        policy_pack_yaml=topology.policy_pack_yaml,
        policy_pack_source=f"the policy pack of coordinator {coordinator}",
    )


def source_from_pack(path: str, namespace: str | None) -> PolicySource:
    if namespace:
        raise InvalidArgument(
            "--namespace needs a cluster (its scopes are in the cluster config): use --cluster-config "
            "or the coordinator instead of --pack, or leave --namespace out"
        )
    pack = load_pack(path)
    policy = JurisdictionPolicy(pack)
    return PolicySource(policy, policy.regions, pack.version, f"policy pack {path}")


def source_from_cluster(cluster: ClusterSpec, namespace: str | None, where: str) -> PolicySource:
    regions = tuple(cluster.region_names())
    pack = pack_of(cluster)
    if namespace:
        cluster.namespace(namespace)  # an unknown namespace is NotFound, naming the known ones
        scope = "namespace scopes and policy pack" if pack is not None else "namespace scopes"
        return PolicySource(
            policy_for_cluster(cluster), regions, cluster.policy_version, f"{scope} of {where}"
        )
    if pack is None:
        raise InvalidArgument(
            f"{where} has no policy pack, so only the namespace scopes apply and the answer depends "
            "on the namespace: pass --namespace"
        )
    return PolicySource(
        JurisdictionPolicy.for_cluster(pack, cluster),
        regions,
        cluster.policy_version,
        f"policy pack of {where}",
    )


def policy_source(args: argparse.Namespace) -> PolicySource:
    if args.pack:
        return source_from_pack(args.pack, args.namespace)
    if args.cluster_config:
        return source_from_cluster(
            load_cluster(args.cluster_config), args.namespace, f"cluster config {args.cluster_config}"
        )
    with Client(
        args.coordinator,
        deadline_s=args.deadline,
        **connect.client_options(args),
        retry=RetryPolicy(attempts_max=2),
    ) as client:
        topology = client.topology()
    return source_from_cluster(
        cluster_from_topology(topology, args.coordinator), args.namespace, f"coordinator {args.coordinator}"
    )


def decision_text(decision: Decision) -> str:
    if decision.outcome == "redact":
        return f"allow with {', '.join(decision.redacted_fields)} redacted"
    return decision.outcome


def explanation_json(
    decision: Decision, facts: RecordFacts, region: str, action: str, source: PolicySource
) -> dict[str, Any]:
    return {
        "decision": decision.outcome,
        "allowed": decision.allowed,
        "redacted_fields": list(decision.redacted_fields),
        "rule": decision.rule,
        "law": decision.law,
        "basis": decision.basis,
        "reason": decision.reason,
        "evidence": list(decision.evidence),
        "allowed_regions": list(decision.allowed_regions),
        "policy_version": source.version,
        "policy_source": source.description,
        "classification": facts.classification.label,
        "subject_jurisdiction": facts.subject_jurisdiction,
        "namespace": facts.namespace,
        "region": region,
        "action": action,
    }


def explanation_text(
    decision: Decision, facts: RecordFacts, region: str, action: str, source: PolicySource
) -> str:
    subject = facts.subject_jurisdiction or "no jurisdiction"
    what = f"{facts.classification.label} record ({subject})"
    if facts.namespace:
        what = f"{what} of namespace {facts.namespace}"
    lines = [
        f"{action} of a {what} at {region}",
        f"decision:        {decision_text(decision)}",
        f"rule:            {decision.rule or '-'}",
        f"law:             {decision.law or '-'}",
        f"basis:           {decision.basis or '-'}",
        f"reason:          {decision.reason}",
    ]
    if decision.evidence:
        lines.append("evidence:")
        lines.extend(f"  - {e}" for e in decision.evidence)
    else:
        lines.append("evidence:        -")
    lines.append(f"allowed regions: {', '.join(decision.allowed_regions) or 'none'} (for this {action})")
    lines.append(f"policy version:  {source.version or '-'} ({source.description})")
    return "\n".join(lines)


def explain(args: argparse.Namespace) -> int:
    # Every input is checked before the policy is asked, so that a typo is exit 2, never a refusal.
    classification = Classification.parse(args.classification)
    action: str = args.action
    check_action(action)
    facts = RecordFacts(
        namespace=args.namespace or "",
        classification=classification,
        subject_jurisdiction=args.subject_jurisdiction,
    )
    check_facts(facts)
    source = policy_source(args)
    region: str = args.region
    if region not in source.regions:
        known = ", ".join(source.regions) or "none"
        raise InvalidArgument(f"unknown region {region!r}; regions of {source.description}: {known}")
    decision = source.policy.decide(facts, region, action)
    if args.json:
        print_json(explanation_json(decision, facts, region, action, source))
    else:
        print(explanation_text(decision, facts, region, action, source))
    return EXIT_ALLOWED if decision.allowed else EXIT_REFUSED
