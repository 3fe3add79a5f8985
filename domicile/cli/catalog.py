"""catalog list | show NS | ropa: the datasets, what is declared about them, where their
records may go under the policy in force, and the GDPR Art. 30 record of processing.

The catalog metadata is part of the cluster config (the topology does not carry it), so these
commands read the cluster config file and the policy pack it names. `show --counts` also asks
every region's node for its record counts and quality figures; `check-schemas` asks every node
how many stored values the schemas of a (new) cluster config would make invalid.

Exit codes: 0 done; 1 `check-schemas` found values a new schema would make invalid; 2 bad
input or a region that could not be asked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from domicile.cli import connect
from domicile.cli.compliance import chosen_regions
from domicile.cli.output import print_json
from domicile.client import AsyncClient, NodeStatus, RetryPolicy
from domicile.cluster import ClusterSpec, NamespaceSpec, load_cluster
from domicile.errors import DomicileError, InvalidArgument
from domicile.policy import Action, RecordFacts
from domicile.policy.pack_model import PolicyPack
from domicile.policy.select import pack_of, policy_for_cluster
from domicile.quality import additive_problems
from domicile.ropa import FORMATS, as_csv, as_markdown, record_of_processing

EXIT_INVALID = 1
EXIT_INCOMPLETE = 2
# Regions are asked concurrently (one node each), at most this many at a time.
_INFLIGHT_MAX = 8


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    catalog = sub.add_parser("catalog", help="the datasets, their metadata and the record of processing")
    actions = catalog.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--cluster-config",
        required=True,
        metavar="FILE",
        help="the cluster config that declares the namespaces (e.g. deploy/cluster.yaml)",
    )
    p = actions.add_parser("list", parents=[source], help="every namespace with its owner, steward and scope")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = actions.add_parser(
        "show",
        parents=[source, common],
        help="one namespace: its metadata, regions and where its records may go under the policy",
    )
    p.add_argument("namespace", metavar="NS")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--region", action="append", metavar="R", help="ask only this region (repeatable)")
    p.add_argument(
        "--counts",
        action="store_true",
        help="also ask every region's node for its record counts per classification and its quality "
        "figures (each node walks its store)",
    )
    p = actions.add_parser(
        "check-schemas",
        parents=[source, common],
        help="how many stored values the schemas of this cluster config would make invalid",
        description="For each namespace of --cluster-config with a schema, ask every region's node "
        "(through the coordinator's topology) to count the stored live values that fail it, and "
        "say where the schema is not an additive change of the one in force. Run it before "
        "rolling out a new config. Exit 0 none, 1 some, 2 a region could not be asked.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--region", action="append", metavar="R", help="ask only this region (repeatable)")
    p = actions.add_parser(
        "ropa",
        parents=[source],
        help="the record of processing activities (GDPR Art. 30(1)) from the catalog, pack and regions",
    )
    p.add_argument("--format", choices=FORMATS, default="md", help="output format (default: %(default)s)")
    p.add_argument(
        "--law", default="gdpr", help="the law id of the pack whose transfers are listed (default: gdpr)"
    )


def _representative_subject(pack: PolicyPack, law_id: str) -> str:
    """A jurisdiction the law covers: its first country, else its first subdivision (US-CA)."""
    law = pack.law(law_id)
    if law is None:
        raise InvalidArgument(f"unknown law {law_id!r}")
    return pack.representative_subject(law)


def where_records_may_go(cluster: ClusterSpec, spec: NamespaceSpec) -> dict[str, list[str]]:
    """Per law of the pack (or "any" for data that is not personal), the regions where a record
    of the namespace's default classification may be stored, by scope and law together."""
    policy = policy_for_cluster(cluster)
    pack = pack_of(cluster)
    regions = cluster.region_names()

    def allowed(jurisdiction: str) -> list[str]:
        facts = RecordFacts(spec.name, spec.classification, "catalog", jurisdiction)
        return [r for r in regions if policy.decide(facts, r, Action.STORE).allowed]

    rule = pack.classifications.get(spec.classification) if pack is not None else None
    if pack is None or rule is None or not rule.personal_data:
        return {"any": allowed("")}
    return {law.id: allowed(_representative_subject(pack, law.id)) for law in pack.laws}


def namespace_doc(cluster: ClusterSpec, spec: NamespaceSpec) -> dict[str, Any]:
    c = spec.catalog
    retention = cluster.retention_class(spec.retention_class)
    return {
        "namespace": spec.name,
        "description": spec.description,
        "owner": spec.owner,
        "steward": c.steward,
        "classification": spec.classification.label,
        "conflict_mode": spec.conflict_mode.value,
        "retention_class": spec.retention_class,
        "retention_basis": retention.basis if retention is not None else "",
        "purposes": list(spec.purposes),
        "lawful_basis": dict(c.lawful_basis),
        "data_subjects": list(c.data_subjects),
        "personal_data": list(c.personal_data),
        "recipients": list(c.recipients),
        "schema": c.schema,
        "scope": spec.scope_text(),
        "regions": [r for r in cluster.region_names() if spec.allows(r)],
        "may_go": where_records_may_go(cluster, spec),
        "policy_version": cluster.policy_version,
    }


@dataclass(frozen=True)
class RegionAnswer:
    region: str
    status: NodeStatus | None
    error: str = ""


async def ask_regions(
    args: argparse.Namespace, candidates: Mapping[str, str]
) -> tuple[Any, list[RegionAnswer]]:
    """Every region's node status with namespace counts (and candidate checks); a region that
    cannot be asked is reported, not fatal. Also returns the topology in force."""
    async with AsyncClient(
        args.coordinator,
        deadline_s=args.deadline,
        **connect.client_options(args),
        retry=RetryPolicy(attempts_max=2),
    ) as client:
        topology = await client.topology()
        limit = asyncio.Semaphore(_INFLIGHT_MAX)

        async def one(region: str) -> RegionAnswer:
            async with limit:
                try:
                    status = await client.node_status(
                        region, namespace_stats=True, candidate_schemas=candidates
                    )
                except DomicileError as exc:
                    return RegionAnswer(region, None, exc.message)
                return RegionAnswer(region, status)

        regions = chosen_regions(topology.region_names(), getattr(args, "region", None))
        answers = await asyncio.gather(*(one(r) for r in regions))
        return topology, list(answers)


def counts_doc(namespace: str, answers: Sequence[RegionAnswer]) -> dict[str, Any]:
    regions: dict[str, Any] = {}
    for a in answers:
        if a.status is None:
            regions[a.region] = {"error": a.error}
            continue
        by_class = {
            s.classification.label: s.records for s in a.status.namespace_stats if s.namespace == namespace
        }
        quality = next((q for q in a.status.namespace_quality if q.namespace == namespace), None)
        regions[a.region] = {
            "records": by_class,
            "validated": quality.validated if quality else 0,
            "refused_by_rule": dict(quality.refused_by_rule) if quality else {},
            "quality_score": quality.quality_score if quality else None,
        }
    return regions


def _list(cluster: ClusterSpec, as_json: bool) -> int:
    docs = [
        {
            "namespace": n.name,
            "classification": n.classification.label,
            "owner": n.owner,
            "steward": n.catalog.steward,
            "scope": n.scope_text(),
        }
        for n in cluster.namespaces
    ]
    if as_json:
        print_json({"namespaces": docs, "policy_version": cluster.policy_version})
        return 0
    print(f"{'NAMESPACE':<16} {'CLASSIFICATION':<14} {'OWNER':<18} {'STEWARD':<32} SCOPE")
    for d in docs:
        steward = d["steward"] or "-"
        print(f"{d['namespace']:<16} {d['classification']:<14} {d['owner']:<18} {steward:<32} {d['scope']}")
    return 0


def _show(cluster: ClusterSpec, name: str, as_json: bool, args: argparse.Namespace) -> int:
    doc = namespace_doc(cluster, cluster.namespace(name))
    answers: list[RegionAnswer] = []
    if args.counts:
        _, answers = asyncio.run(ask_regions(args, {}))
        doc["counts"] = counts_doc(name, answers)
    if as_json:
        print_json(doc)
        return 0
    for key in ("namespace", "description", "owner", "steward", "classification", "retention_class", "scope"):
        print(f"{key + ':':<17}{doc[key] or '-'}")
    for key in ("purposes", "data_subjects", "personal_data", "recipients", "regions"):
        print(f"{key + ':':<17}{', '.join(doc[key]) or '-'}")
    print(f"{'schema:':<17}{doc['schema'] or '-'}")
    print("lawful basis:")
    for law, basis in doc["lawful_basis"].items() or [("-", "not declared")]:
        print(f"  {law}: {basis}")
    print(f"may go (store, policy {doc['policy_version']}):")
    for law, regions in doc["may_go"].items():
        print(f"  {law}: {', '.join(regions) or 'nowhere'}")
    if args.counts:
        print("records per region (classification: count), quality since each node started:")
        for region, c in doc["counts"].items():
            if "error" in c:
                print(f"  {region}: not asked: {c['error']}")
                continue
            records = ", ".join(f"{k}: {v}" for k, v in c["records"].items()) or "none"
            refused = ", ".join(f"{k}: {v}" for k, v in c["refused_by_rule"].items()) or "none"
            score = "-" if c["quality_score"] is None else f"{c['quality_score']:.3f}"
            print(f"  {region}: {records}; validated {c['validated']}, refused {refused}, quality {score}")
    return EXIT_INCOMPLETE if any(a.status is None for a in answers) else 0


def _check_schemas(cluster: ClusterSpec, args: argparse.Namespace) -> int:
    candidates = {n.name: n.json_schema for n in cluster.namespaces if n.json_schema}
    if not candidates:
        raise InvalidArgument(f"no namespace of {args.cluster_config} declares a schema")
    topology, answers = asyncio.run(ask_regions(args, candidates))
    in_force = {n.name: n.json_schema for n in topology.namespaces}
    doc: dict[str, Any] = {
        "namespaces": {},
        "regions_failed": [a.region for a in answers if a.status is None],
    }
    for name, text in candidates.items():
        old = in_force.get(name, "")
        invalid = {
            a.region: sum(s.candidate_invalid for s in a.status.namespace_stats if s.namespace == name)
            for a in answers
            if a.status is not None
        }
        doc["namespaces"][name] = {
            "invalid": invalid,
            "invalid_total": sum(invalid.values()),
            "changed": old != text,
            "not_additive": additive_problems(json.loads(old), json.loads(text)) if old else [],
        }
    if args.json:
        print_json(doc)
    else:
        for name, n in doc["namespaces"].items():
            state = "changed" if n["changed"] else "as in force"
            print(f"{name}: {n['invalid_total']} stored values would be invalid ({state})")
            for region, count in n["invalid"].items():
                print(f"  {region}: {count}")
            for problem in n["not_additive"]:
                print(f"  not additive: {problem}")
        for region in doc["regions_failed"]:
            print(f"{region}: not asked: {next(a.error for a in answers if a.region == region)}")
    if doc["regions_failed"]:
        return EXIT_INCOMPLETE
    return EXIT_INVALID if any(n["invalid_total"] for n in doc["namespaces"].values()) else 0


def _ropa(cluster: ClusterSpec, fmt: str, law_id: str) -> int:
    pack = pack_of(cluster)
    if pack is None:
        raise InvalidArgument("the cluster config names no policy_pack; the record of processing needs one")
    record = record_of_processing(cluster, pack, law_id)
    if fmt == "json":
        print_json(record)
    else:
        sys.stdout.write(as_csv(record) if fmt == "csv" else as_markdown(record))
    return 0


def catalog(args: argparse.Namespace) -> int:
    cluster = load_cluster(args.cluster_config)
    if args.subcommand == "list":
        return _list(cluster, args.json)
    if args.subcommand == "show":
        return _show(cluster, args.namespace, args.json, args)
    if args.subcommand == "check-schemas":
        return _check_schemas(cluster, args)
    return _ropa(cluster, args.format, args.law)
