"""Export of a data subject's records held in this region (GDPR Art. 15 and 20, CCPA right to
know): every live record of the subject this region may serve, values in clear, with the
retention that applies and the legal basis for holding the copy here. Every record read is
audited; a copy the policy does not let this region serve is left out (another region serves
it), and so is a value whose data key was destroyed (erased). A copy in a namespace the cluster
config no longer has is still held here, and no region serves it: it is exported whole, without
a legal basis, its read audited under the scan's rule namespace-unknown."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from domicile.causality import KeyState, Version
from domicile.model import Classification
from domicile.policy import Action, RecordFacts
from domicile.subjects import LegalHold, hold_covering
from node.compliance.enforcer import Audit, Enforcer
from node.compliance.redaction import redact
from node.compliance.scanner import RULE_UNKNOWN_NAMESPACE
from node.crypto.sealing import Sealer
from node.engine.base import StorageEngine
from node.offload import Offload
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


# Keys read per get_many; the opened versions of one page are held at a time, per hop.
PAGE_KEYS = 500


@dataclass(frozen=True)
class _Held:
    """A key of the subject as read: its state and, per live version of the subject, the version
    opened (None: its data key was destroyed) or the error opening it raised."""

    namespace: str
    key: str
    state: KeyState
    opened: tuple[Version | Exception | None, ...]


def _read_subject(engine: StorageEngine, sealer: Sealer, subject_id: str) -> list[_Held]:
    """Every key of the subject with its live versions of the subject opened, in one hop. A
    version is opened before the policy is asked whether it may be served (that must happen on
    the event loop, with its audit entry); an error is kept and raised only if it is served."""
    held = []
    keys = engine.subject_keys(subject_id)
    for namespace, group in itertools.groupby(keys, key=lambda nk: nk[0]):
        names = [key for _, key in group]
        for i in range(0, len(names), PAGE_KEYS):
            page = names[i : i + PAGE_KEYS]
            states = engine.get_many(namespace, page)
            for key in page:
                state = states.get(key)
                if state is None:
                    continue
                opened = tuple(
                    _open(sealer, namespace, key, v) for v in state.live() if v.subject_id == subject_id
                )
                held.append(_Held(namespace, key, state, opened))
    return held


def _unconfigured(
    h: _Held, subject_id: str, region: str, enforcer: Enforcer, principal: str, request_id: str
) -> ExportedCopy | None:
    """The subject's copy of a key whose namespace the cluster config no longer has: no policy
    decides a read of it (the namespace is unknown), so it is exported whole, audited as read
    under rule namespace-unknown."""
    versions: list[Version] = []
    for opened in h.opened:
        if isinstance(opened, Exception):
            raise opened
        if opened is not None:
            versions.append(opened)
    if not versions:
        return None
    enforcer.audit.record(
        principal=principal,
        action=Audit.READ,
        namespace=h.namespace,
        key=h.key,
        subject_id=subject_id,
        decision="allow",
        rule=RULE_UNKNOWN_NAMESPACE,
        policy_version=enforcer.policy_version,
        detail=f"export request={request_id}: namespace not in the cluster config"[:200],
    )
    newest = max(versions, key=lambda v: v.hlc)
    return ExportedCopy(
        namespace=h.namespace,
        key=h.key,
        classification=newest.classification,
        versions=tuple(versions),
        redacted=tuple(() for _ in versions),
        region=region,
        retention_class="",
        retention_period_s=0,
        legal_basis=(
            f"none recorded: namespace {h.namespace} is no longer in the cluster configuration "
            f"(compliance scan rule {RULE_UNKNOWN_NAMESPACE})"
        ),
        hold_reason="",
    )


def _hold_reason(holds: tuple[LegalHold, ...], namespace: str, key: str, subject_id: str) -> str:
    hold = hold_covering(holds, namespace, key, subject_id)
    return hold.describe() if hold else ""


def _open(sealer: Sealer, namespace: str, key: str, v: Version) -> Version | Exception | None:
    try:
        return sealer.open_version(namespace, key, v)
    except Exception as exc:
        return exc


async def export_subject(
    *,
    subject_id: str,
    region: str,
    engine: StorageEngine,
    view: TopologyView,
    enforcer: Enforcer,
    sealer: Sealer,
    principal: str,
    request_id: str,
    offload: Offload,
) -> list[ExportedCopy]:
    held = await offload.run(_read_subject, engine, sealer, subject_id)
    topology = view.topology
    cluster = topology.cluster
    out = []
    for h in held:
        namespace, key, state = h.namespace, h.key, h.state
        spec = cluster.find_namespace(namespace)
        if spec is None:
            # Still held (and readable), though the config dropped its namespace: the subject is
            # told of it all the same, as held without a basis (the compliance scan reports it).
            found = _unconfigured(h, subject_id, region, enforcer, principal, request_id)
            if found is not None:
                found = dataclasses.replace(
                    found, hold_reason=_hold_reason(topology.holds, namespace, key, subject_id)
                )
                out.append(found)
            continue
        versions: list[Version] = []
        redacted: list[tuple[str, ...]] = []
        basis = ""
        mine = [v for v in state.live() if v.subject_id == subject_id]
        for v, opened in zip(mine, h.opened, strict=True):
            facts = RecordFacts(namespace, v.classification, v.subject_id, v.subject_jurisdiction)
            decision, _ = enforcer.decide(
                facts, Action.READ, audit_action=Audit.READ, principal=principal, key=key,
                detail=f"export request={request_id}"[:200],
            )  # fmt: skip
            if not decision.allowed:
                continue
            if isinstance(opened, Exception):
                raise opened
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
