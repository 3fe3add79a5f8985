"""The record of processing activities (GDPR Art. 30(1)), built from what the platform already
knows: the catalog metadata of each namespace (domicile/catalog.py), the cluster's regions and
retention classes, and the policy pack (which transfers its law allows, and on what basis).

One activity per namespace that holds personal data. Each carries the seven items of
Art. 30(1): (a) controller, (b) purposes, (c) categories of data subjects and of personal data,
(d) recipients, (e) transfers to third countries with the safeguard relied on, (f) the time
limit for erasure, (g) the security measures. An item the configuration does not declare is
listed under `gaps` rather than invented.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from domicile.cluster import ClusterSpec, NamespaceSpec
from domicile.errors import InvalidArgument
from domicile.policy import Action, RecordFacts
from domicile.policy.engine import JurisdictionPolicy
from domicile.policy.pack_model import PolicyPack
from domicile.subjects import DAY_S, YEAR_S

FORMATS = ("json", "csv", "md")
# The measures every deployment of the platform enforces (Art. 32(1)); they are properties of the
# code, not of the configuration, so they are stated here where the code that makes them true is
# named.
SECURITY_MEASURES = (
    "mutual TLS on every port (plaintext only with an explicit --insecure, logged)",
    "authorization of every call by Cedar policies, with purpose limitation per namespace",
    "residency enforced on write, at both ends of replication and on read by one policy function",
    "encryption at rest per data subject and retention class (crypto-shredding on erasure)",
    "a tamper-evident, hash-chained audit trail per region with signed heads kept by the coordinator",
    "durable commits (SQLite WAL, synchronous=FULL) and write-ahead audit of every write",
)
ITEMS = ("a", "b", "c", "d", "e", "f", "g")


@dataclass(frozen=True)
class Transfer:
    region: str
    country: str
    rule: str
    basis: str


def _transfers(
    policy: JurisdictionPolicy, pack: PolicyPack, spec: NamespaceSpec, law_id: str, regions: Sequence[str]
) -> list[Transfer]:
    """Regions outside the law's home area that may hold this namespace's records of a subject
    of that law, with the rule and basis that allow it (an adequacy decision or a mechanism)."""
    law = pack.law(law_id)
    if law is None:
        known = ", ".join(x.id for x in pack.laws)
        raise InvalidArgument(f"unknown law {law_id!r}; laws of the policy pack: {known}")
    subject = pack.representative_subject(law)
    out: list[Transfer] = []
    for name in regions:
        region = pack.region(name)
        if region is None or not spec.allows(name) or pack.in_home(law, region):
            continue
        facts = RecordFacts(spec.name, spec.classification, "ropa", subject)
        decision = policy.decide(facts, name, Action.REPLICATE)
        if decision.allowed:
            out.append(Transfer(name, region.country, decision.rule, decision.basis))
    return out


def record_of_processing(cluster: ClusterSpec, pack: PolicyPack, law_id: str = "gdpr") -> dict[str, Any]:
    """The record as plain data (what `--format json` prints)."""
    policy = JurisdictionPolicy.for_cluster(pack, cluster)
    regions = cluster.region_names()
    controller = cluster.controller
    activities: list[dict[str, Any]] = []
    for spec in cluster.namespaces:
        rule = pack.classifications.get(spec.classification)
        if rule is None or not rule.personal_data:
            continue
        c = spec.catalog
        retention = cluster.retention_class(spec.retention_class)
        transfers = _transfers(policy, pack, spec, law_id, regions)
        activity: dict[str, Any] = {
            "namespace": spec.name,
            "description": spec.description,
            "owner": spec.owner,
            "steward": c.steward,
            "a_controller": {
                "name": controller.name if controller else "",
                "contact": controller.contact if controller else "",
                "representative": controller.representative if controller else "",
                "dpo": controller.dpo if controller else "",
            },
            "b_purposes": list(spec.purposes),
            "lawful_basis": c.lawful_basis.get(law_id, ""),
            "c_data_subjects": list(c.data_subjects),
            "c_personal_data": list(c.personal_data),
            "d_recipients": list(c.recipients),
            "d_third_countries": sorted({t.country for t in transfers}),
            "e_transfers": [
                {"region": t.region, "country": t.country, "rule": t.rule, "safeguard": t.basis}
                for t in transfers
            ],
            "f_erasure_time_limit": (
                {
                    "retention_class": retention.name,
                    "period": period_text(retention.period_s),
                    "basis": retention.basis,
                }
                if retention is not None
                else {}
            ),
            "g_security_measures": list(SECURITY_MEASURES),
            "regions": [r for r in regions if spec.allows(r)],
        }
        activity["gaps"] = gaps(activity)
        activities.append(activity)
    return {
        "law": law_id,
        "policy_version": pack.version,
        "controller": activities[0]["a_controller"] if activities else {},
        "activities": activities,
    }


def period_text(period_s: int) -> str:
    if period_s == 0:
        return "kept until deleted"
    for unit, seconds in (("years", YEAR_S), ("days", DAY_S), ("hours", 3600)):
        if period_s % seconds == 0:
            return f"{period_s // seconds} {unit} after the last write"
    return f"{period_s} seconds after the last write"


def gaps(activity: Mapping[str, Any]) -> list[str]:
    """The Art. 30(1) items the configuration leaves empty for this activity."""
    out: list[str] = []
    if not activity["a_controller"]["name"] or not activity["a_controller"]["contact"]:
        out.append("(a) controller: add controller.name and controller.contact to the cluster config")
    if not activity["b_purposes"]:
        out.append("(b) purposes: add purposes to the namespace")
    if not activity["lawful_basis"]:
        out.append("lawful basis: add lawful_basis for this law to the namespace")
    if not activity["c_data_subjects"] or not activity["c_personal_data"]:
        out.append("(c) categories: add data_subjects and personal_data to the namespace")
    if not activity["d_recipients"]:
        out.append("(d) recipients: add recipients to the namespace")
    if not activity["f_erasure_time_limit"]:
        out.append("(f) erasure time limit: give the namespace a retention_class")
    return out


def _joined(values: Sequence[Any]) -> str:
    return "; ".join(str(v) for v in values)


def _transfer_text(t: Mapping[str, str]) -> str:
    return f"{t['region']} ({t['country']}): {t['safeguard']}"


def as_csv(record: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "namespace",
            "controller",
            "purposes",
            "lawful_basis",
            "data_subjects",
            "personal_data",
            "recipients",
            "third_countries",
            "transfers",
            "erasure_time_limit",
            "security_measures",
            "gaps",
        ]
    )
    for a in record["activities"]:
        ctl = a["a_controller"]
        limit = a["f_erasure_time_limit"]
        writer.writerow(
            [
                a["namespace"],
                f"{ctl['name']} ({ctl['contact']})" if ctl["name"] else "",
                _joined(a["b_purposes"]),
                a["lawful_basis"],
                _joined(a["c_data_subjects"]),
                _joined(a["c_personal_data"]),
                _joined(a["d_recipients"]),
                _joined(a["d_third_countries"]),
                _joined([_transfer_text(t) for t in a["e_transfers"]]),
                f"{limit['period']} ({limit['basis']})" if limit else "",
                _joined(a["g_security_measures"]),
                _joined(a["gaps"]),
            ]
        )
    return buf.getvalue()


def as_markdown(record: Mapping[str, Any]) -> str:
    lines = [
        f"# Record of processing activities ({record['law']}, Art. 30(1))",
        "",
        f"Policy pack {record['policy_version']}.",
    ]
    for a in record["activities"]:
        ctl = a["a_controller"]
        limit = a["f_erasure_time_limit"]
        rows = [
            (
                "(a) controller",
                f"{ctl['name']}, {ctl['contact']}" + (f"; DPO {ctl['dpo']}" if ctl["dpo"] else ""),
            ),
            ("(b) purposes", _joined(a["b_purposes"])),
            ("lawful basis", a["lawful_basis"]),
            ("(c) data subjects", _joined(a["c_data_subjects"])),
            ("(c) personal data", _joined(a["c_personal_data"])),
            ("(d) recipients", _joined(a["d_recipients"])),
            ("(e) transfers", _joined([_transfer_text(t) for t in a["e_transfers"]]) or "none"),
            ("(f) erasure time limit", f"{limit['period']} ({limit['basis']})" if limit else ""),
            ("(g) security measures", _joined(a["g_security_measures"])),
        ]
        lines += ["", f"## {a['namespace']}", "", a["description"], "", "| item | entry |", "| --- | --- |"]
        lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in rows]
        if a["gaps"]:
            lines += ["", "Not declared: " + _joined(a["gaps"])]
    return "\n".join(lines) + "\n"
