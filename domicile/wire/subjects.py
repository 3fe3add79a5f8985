"""Data-subject types on the wire: domicile.subjects <-> domicile.v1 subject.proto messages, and
a subject's exported records."""

from __future__ import annotations

from typing import Any

from domicile.errors import DomicileError
from domicile.model import Classification
from domicile.results import ExportedCopy
from domicile.subjects import (
    ErasureOrder,
    HoldRelease,
    HoldScope,
    KeptRecord,
    LegalHold,
    RegionReceipt,
    RequestKind,
    RequestStatus,
    RetentionClass,
    SubjectRequest,
)
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import subject_pb2 as pb
from domicile.wire.enums import enum_or
from domicile.wire.records import read_versions_from_pb


def hold_to_pb(h: LegalHold, out: pb.LegalHold | None = None) -> pb.LegalHold:
    msg = out if out is not None else pb.LegalHold()
    msg.hold_id = h.hold_id
    msg.scope = int(h.scope)  # type: ignore[assignment]
    msg.subject_id = h.subject_id
    msg.namespace = h.namespace
    msg.key = h.key
    msg.reason = h.reason
    msg.placed_unix_ms = h.placed_ms
    msg.placed_by = h.placed_by
    return msg


def hold_from_pb(msg: pb.LegalHold) -> LegalHold:
    return LegalHold(
        hold_id=msg.hold_id,
        scope=enum_or(HoldScope, msg.scope, HoldScope.UNSPECIFIED),
        subject_id=msg.subject_id,
        namespace=msg.namespace,
        key=msg.key,
        reason=msg.reason,
        placed_ms=msg.placed_unix_ms,
        placed_by=msg.placed_by,
    )


def release_to_pb(r: HoldRelease) -> pb.LegalHoldRelease:
    return pb.LegalHoldRelease(
        hold_id=r.hold_id, released_unix_ms=r.released_ms, released_by=r.released_by, reason=r.reason
    )


def release_from_pb(msg: pb.LegalHoldRelease) -> HoldRelease:
    return HoldRelease(msg.hold_id, msg.released_unix_ms, msg.reason, msg.released_by)


def erasure_to_pb(e: ErasureOrder, out: pb.ErasureOrder | None = None) -> pb.ErasureOrder:
    msg = out if out is not None else pb.ErasureOrder()
    msg.request_id = e.request_id
    msg.subject_id = e.subject_id
    msg.requested_unix_ms = e.requested_ms
    msg.regions_pending.extend(e.regions_pending)
    msg.requested_by = e.requested_by
    return msg


def erasure_from_pb(msg: pb.ErasureOrder) -> ErasureOrder:
    return ErasureOrder(
        msg.request_id, msg.subject_id, msg.requested_unix_ms, tuple(msg.regions_pending), msg.requested_by
    )


def retention_to_pb(r: RetentionClass, out: pb.RetentionClass | None = None) -> pb.RetentionClass:
    msg = out if out is not None else pb.RetentionClass()
    msg.name = r.name
    msg.period_seconds = r.period_s
    msg.legal_obligation = r.legal_obligation
    msg.basis = r.basis
    return msg


def retention_from_pb(msg: pb.RetentionClass) -> RetentionClass:
    return RetentionClass(msg.name, msg.period_seconds, msg.legal_obligation, msg.basis)


def receipt_to_pb(r: RegionReceipt, out: pb.RegionErasureReceipt | None = None) -> pb.RegionErasureReceipt:
    msg = out if out is not None else pb.RegionErasureReceipt()
    msg.region = r.region
    msg.node_id = r.node_id
    msg.started_unix_ms = r.started_ms
    msg.completed_unix_ms = r.completed_ms
    for namespace, records in r.erased:
        msg.erased.add(namespace=namespace, records=records)
    for k in r.kept:
        msg.kept.add(namespace=k.namespace, key=k.key, reason=k.reason)
    msg.keys_destroyed = r.keys_destroyed
    msg.audit_seq = r.audit_seq
    msg.kept_total = r.kept_total
    msg.released_hold_id = r.released_hold_id
    return msg


def receipt_from_pb(msg: pb.RegionErasureReceipt) -> RegionReceipt:
    return RegionReceipt(
        region=msg.region,
        node_id=msg.node_id,
        started_ms=msg.started_unix_ms,
        completed_ms=msg.completed_unix_ms,
        erased=tuple(sorted((c.namespace, c.records) for c in msg.erased)),
        kept=tuple(KeptRecord(k.namespace, k.key, k.reason) for k in msg.kept),
        keys_destroyed=msg.keys_destroyed,
        audit_seq=msg.audit_seq,
        kept_total=msg.kept_total or len(msg.kept),
        released_hold_id=msg.released_hold_id,
    )


def request_to_pb(r: SubjectRequest, out: pb.SubjectRequest | None = None) -> pb.SubjectRequest:
    msg = out if out is not None else pb.SubjectRequest()
    msg.request_id = r.request_id
    msg.kind = int(r.kind)  # type: ignore[assignment]
    msg.subject_id = r.subject_id
    msg.subject_jurisdiction = r.subject_jurisdiction
    msg.reason = r.reason
    msg.received_unix_ms = r.received_ms
    msg.due_unix_ms = r.due_ms
    msg.status = int(r.status)  # type: ignore[assignment]
    msg.regions_pending.extend(r.regions_pending)
    for receipt in r.receipts:
        receipt_to_pb(receipt, msg.receipts.add())
    for receipt in r.release_receipts:
        receipt_to_pb(receipt, msg.release_receipts.add())
    msg.completed_unix_ms = r.completed_ms
    msg.records_exported = r.records_exported
    return msg


def request_from_pb(msg: pb.SubjectRequest) -> SubjectRequest:
    return SubjectRequest(
        request_id=msg.request_id,
        kind=enum_or(RequestKind, msg.kind, RequestKind.UNSPECIFIED),
        subject_id=msg.subject_id,
        subject_jurisdiction=msg.subject_jurisdiction,
        reason=msg.reason,
        received_ms=msg.received_unix_ms,
        due_ms=msg.due_unix_ms,
        status=enum_or(RequestStatus, msg.status, RequestStatus.UNSPECIFIED),
        regions_pending=tuple(msg.regions_pending),
        receipts=tuple(receipt_from_pb(r) for r in msg.receipts),
        release_receipts=tuple(receipt_from_pb(r) for r in msg.release_receipts),
        completed_ms=msg.completed_unix_ms,
        records_exported=msg.records_exported,
    )


def request_of(msg: Any, what: str) -> SubjectRequest:
    """The request of a coordinator response that carries one in its `request` field."""
    if not msg.HasField("request"):
        raise DomicileError(f"{what}: the coordinator answered without the request")
    return request_from_pb(msg.request)


def hold_of(msg: Any, what: str) -> LegalHold:
    """The hold of a coordinator response that carries one in its `hold` field."""
    if not msg.HasField("hold"):
        raise DomicileError(f"{what}: the coordinator answered without the hold")
    return hold_from_pb(msg.hold)


def exported_copies_from_pb(
    msg: spb.ExportSubjectResponse, node_id: str, region: str, where: str
) -> list[ExportedCopy]:
    """One message of an ExportSubject stream, from the node `node_id` of `region`."""
    return [
        ExportedCopy(
            namespace=r.namespace,
            key=r.key,
            region=r.region or region,
            classification=enum_or(Classification, r.classification, Classification.UNSPECIFIED),
            versions=read_versions_from_pb(r.versions, f"export from {where}"),
            retention_class=r.retention_class,
            retention_period_s=r.retention_period_seconds,
            legal_basis=r.legal_basis,
            hold_reason=r.hold_reason,
            node_id=node_id,
        )
        for r in msg.records
    ]
