"""catalog list | show NS | ropa: the datasets, what is declared about them, where their
records may go under the policy in force, and the GDPR Art. 30 record of processing.

The catalog metadata is part of the cluster config (the topology does not carry it), so these
commands read the cluster config file and the policy pack it names; nothing is sent to the
cluster.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from domicile.cli.output import print_json
from domicile.cluster import ClusterSpec, NamespaceSpec, load_cluster
from domicile.errors import InvalidArgument
from domicile.policy import Action, RecordFacts
from domicile.policy.pack_model import PolicyPack
from domicile.policy.select import pack_of, policy_for_cluster
from domicile.ropa import FORMATS, as_csv, as_markdown, record_of_processing


def add_parser(sub: Any) -> None:
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
        parents=[source],
        help="one namespace: its metadata, regions and where its records may go under the policy",
    )
    p.add_argument("namespace", metavar="NS")
    p.add_argument("--json", action="store_true", help="print JSON")
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
    codes = sorted(pack.expand(law.subjects))
    return next((c for c in codes if "-" not in c), codes[0])


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


def _show(cluster: ClusterSpec, name: str, as_json: bool) -> int:
    doc = namespace_doc(cluster, cluster.namespace(name))
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
    return 0


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
        return _show(cluster, args.namespace, args.json)
    return _ropa(cluster, args.format, args.law)
