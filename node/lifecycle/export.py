"""Export of a data subject's records held in this region (GDPR Art. 15 and 20, CCPA right to
know): every live record of the subject this region may serve, values in clear, with the
retention that applies and the legal basis for holding the copy here. Every record read is
audited; a copy the policy does not let this region serve is left out (another region serves
it), and so is a value whose data key was destroyed (erased)."""

from __future__ import annotations

from dataclasses import dataclass

from domicile.causality import Version
from domicile.model import Classification
from domicile.policy import Action, RecordFacts
from domicile.subjects import hold_covering
from node.compliance.enforcer import Audit, Enforcer
from node.compliance.redaction import redact
from node.crypto.sealing import Sealer
from node.engine.base import StorageEngine
from node.topology_view import TopologyView


@dataclass(frozen=True)
class ExportedCopy:
    namespace: str
    key: str
    classification: Classification
    versions: tuple[Version, ...]
    redacted: tuple[tuple[str, ...], ...]
    region: str
    retention_class: str
    retention_period_s: int
    legal_basis: str
    hold_reason: str


def export_subject(
    *,
    subject_id: str,
    region: str,
    engine: StorageEngine,
    view: TopologyView,
    enforcer: Enforcer,
    sealer: Sealer,
    principal: str,
    request_id: str,
) -> list[ExportedCopy]:
    topology = view.topology
    cluster = topology.cluster
    out = []
    for namespace, key in engine.subject_keys(subject_id):
        state = engine.get(namespace, key)
        spec = cluster.find_namespace(namespace)
        if state is None or spec is None:
            continue
        versions: list[Version] = []
        redacted: list[tuple[str, ...]] = []
        basis = ""
        for v in state.live():
            if v.subject_id != subject_id:
                continue
            facts = RecordFacts(namespace, v.classification, v.subject_id, v.subject_jurisdiction)
            decision, _ = enforcer.decide(
                facts, Action.READ, audit_action=Audit.READ, principal=principal, key=key,
                detail=f"export request={request_id}"[:200],
            )  # fmt: skip
            if not decision.allowed:
                continue
            opened = sealer.open_version(namespace, key, v)
            if opened is None:
                continue
            versions.append(redact(opened, decision.redacted_fields))
            redacted.append(decision.redacted_fields)
            holding = view.policy.decide(
                facts, region, Action.STORE if v.origin_region == region else Action.REPLICATE
            )
            basis = basis or holding.basis or holding.reason
        if not versions:
            continue
        retention = cluster.retention_class(spec.retention_class)
        hold = hold_covering(topology.holds, namespace, key, subject_id)
        newest = max(versions, key=lambda v: v.hlc)
        out.append(
            ExportedCopy(
                namespace=namespace,
                key=key,
                classification=newest.classification,
                versions=tuple(versions),
                redacted=tuple(redacted),
                region=region,
                retention_class=spec.retention_class,
                retention_period_s=retention.period_s if retention else 0,
                legal_basis=basis,
                hold_reason=hold.describe() if hold else "",
            )
        )
    return out
