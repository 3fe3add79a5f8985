"""Stand-ins for the data-subject RPCs, on top of the stand-ins of test_client_wire: a
coordinator with an in-memory request desk and legal holds, and nodes that stream
ExportSubject. They answer like the real daemons (ids, ALREADY_EXISTS naming the open request,
NOT_FOUND, FAILED_PRECONDITION) without their logic; the real ones are tested in
tests/integration and tests/system."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from domicile.model import Classification
from domicile.subjects import due_ms
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import subject_pb2 as subpb
from tests.unit.test_client_wire import FakeCluster, FakeCoordinator, FakeNode

RECEIVED_MS = 1_790_000_000_000


class SubjectDesk(FakeCoordinator):
    """A coordinator that keeps requests and holds in memory.

    `script[request_id]` lists the states GetSubjectRequest serves, one per poll, before it
    serves the request as it stands: a test can make a request progress region by region."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.requests: dict[str, subpb.SubjectRequest] = {}
        self.order: list[str] = []
        self.hold_table: dict[str, subpb.LegalHold] = {}
        self.script: dict[str, list[subpb.SubjectRequest]] = {}
        self.polls: dict[str, int] = {}
        self.completions: list[tuple[str, int]] = []
        self.released: list[tuple[str, str]] = []
        self.erase_requests: list[cpb.EraseSubjectRequest] = []
        self.place_requests: list[cpb.PlaceLegalHoldRequest] = []
        self.list_requests: list[cpb.ListSubjectRequestsRequest] = []
        # Called with each erasure request as opened, e.g. to script its progress.
        self.after_erase: Callable[[subpb.SubjectRequest], None] | None = None
        self._ids = 0

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids:010x}"

    def _open(self, kind: int, subject_id: str, jurisdiction: str, reason: str) -> subpb.SubjectRequest:
        request = subpb.SubjectRequest(
            request_id=self._next_id("req"),
            kind=kind,  # type: ignore[arg-type]
            subject_id=subject_id,
            subject_jurisdiction=jurisdiction,
            reason=reason,
            received_unix_ms=RECEIVED_MS,
            due_unix_ms=due_ms(RECEIVED_MS, jurisdiction),
            status=subpb.SUBJECT_REQUEST_STATUS_OPEN,
        )
        self.requests[request.request_id] = request
        self.order.append(request.request_id)
        return request

    def _find(self, request_id: str, context: grpc.ServicerContext) -> subpb.SubjectRequest:
        found = self.requests.get(request_id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no subject request {request_id!r}")
        return found

    def EraseSubject(self, request, context):
        with self.lock:
            self.erase_requests.append(request)
            if not request.subject_id or not request.reason:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a subject id and a reason are required")
            existing = next(
                (
                    r
                    for r in self.requests.values()
                    if r.kind == subpb.SUBJECT_REQUEST_KIND_ERASURE
                    and r.subject_id == request.subject_id
                    and r.status == subpb.SUBJECT_REQUEST_STATUS_OPEN
                ),
                None,
            )
            if existing is not None:
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"an erasure of this subject is already open: {existing.request_id}, regions pending: "
                    f"{', '.join(existing.regions_pending) or 'none'}; follow it with GetSubjectRequest",
                )
            opened = self._open(
                subpb.SUBJECT_REQUEST_KIND_ERASURE,
                request.subject_id,
                request.subject_jurisdiction,
                request.reason,
            )
            opened.regions_pending.extend(r.name for r in self.topology.regions)
            response = cpb.EraseSubjectResponse(request=opened)
            if self.after_erase is not None:
                self.after_erase(opened)
            return response

    def OpenSubjectRequest(self, request, context):
        with self.lock:
            if request.kind != subpb.SUBJECT_REQUEST_KIND_ACCESS:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only access requests; use EraseSubject")
            opened = self._open(
                subpb.SUBJECT_REQUEST_KIND_ACCESS,
                request.subject_id,
                request.subject_jurisdiction,
                request.reason,
            )
            return cpb.OpenSubjectRequestResponse(request=opened)

    def CompleteSubjectRequest(self, request, context):
        with self.lock:
            found = self._find(request.request_id, context)
            if (
                found.kind != subpb.SUBJECT_REQUEST_KIND_ACCESS
                or found.status != subpb.SUBJECT_REQUEST_STATUS_OPEN
            ):
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, f"{request.request_id} is not an open access request"
                )
            found.status = subpb.SUBJECT_REQUEST_STATUS_COMPLETED
            found.records_exported = request.records_exported
            found.completed_unix_ms = RECEIVED_MS + 60_000
            self.completions.append((request.request_id, request.records_exported))
            return cpb.CompleteSubjectRequestResponse(request=found)

    def GetSubjectRequest(self, request, context):
        with self.lock:
            self.polls[request.request_id] = self.polls.get(request.request_id, 0) + 1
            steps = self.script.get(request.request_id)
            if steps:
                self.requests[request.request_id] = steps.pop(0)
            return cpb.GetSubjectRequestResponse(request=self._find(request.request_id, context))

    def ListSubjectRequests(self, request, context):
        with self.lock:
            self.list_requests.append(request)
            newest_first = [self.requests[i] for i in reversed(self.order)]
            if request.open_only:
                newest_first = [r for r in newest_first if r.status == subpb.SUBJECT_REQUEST_STATUS_OPEN]
            return cpb.ListSubjectRequestsResponse(requests=newest_first[: request.limit or 100])

    def PlaceLegalHold(self, request, context):
        with self.lock:
            self.place_requests.append(request)
            hold = subpb.LegalHold(
                hold_id=self._next_id("hold"),
                scope=request.scope,
                subject_id=request.subject_id,
                namespace=request.namespace,
                key=request.key,
                reason=request.reason,
                placed_unix_ms=RECEIVED_MS,
            )
            self.hold_table[hold.hold_id] = hold
            return cpb.PlaceLegalHoldResponse(hold=hold)

    def ReleaseLegalHold(self, request, context):
        with self.lock:
            hold = self.hold_table.pop(request.hold_id, None)
            if hold is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no legal hold {request.hold_id!r} in force")
            self.released.append((request.hold_id, request.reason))
            return cpb.ReleaseLegalHoldResponse(hold=hold)

    def ListLegalHolds(self, request, context):
        with self.lock:
            return cpb.ListLegalHoldsResponse(holds=list(self.hold_table.values()))


@dataclass
class ExportingNode(FakeNode):
    """A node that streams the records given to it per subject, `export_batch` per message.
    `export_break_after` aborts the stream with UNAVAILABLE after that many messages."""

    exports: dict[str, list[subpb.ExportedRecord]] = field(default_factory=dict)
    export_batch: int = 2
    export_break_after: int | None = None
    export_requests: list[spb.ExportSubjectRequest] = field(default_factory=list)

    def ExportSubject(self, request, context):
        self._enter("ExportSubject", context)
        self.export_requests.append(request)
        records = self.exports.get(request.subject_id, [])
        for sent, i in enumerate(range(0, len(records), self.export_batch)):
            if self.export_break_after is not None and sent >= self.export_break_after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected broken stream")
            yield spb.ExportSubjectResponse(records=records[i : i + self.export_batch])


@dataclass(frozen=True)
class V:
    """A version to export: written by `node` as its `counter`th write."""

    node: str
    counter: int
    value: bytes
    hlc: int = 1
    redacted: tuple[str, ...] = ()
    content_type: str = "text/plain"


def exported(
    namespace: str,
    key: str,
    region: str,
    versions: Iterable[V],
    *,
    subject_id: str = "s-1",
    classification: Classification = Classification.PERSONAL,
    retention_class: str = "user_data",
    retention_period_s: int = 7 * 365 * 86_400,
    legal_basis: str = "",
    hold_reason: str = "",
) -> subpb.ExportedRecord:
    """An ExportedRecord as a node sends it: valid checksums, redacted values emptied (with
    their checksum, as the node does)."""
    record = subpb.ExportedRecord(
        namespace=namespace,
        key=key,
        classification=int(classification),  # type: ignore[arg-type]
        region=region,
        retention_class=retention_class,
        retention_period_seconds=retention_period_s,
        legal_basis=legal_basis or f"stored in {region}: GDPR Art. 6(1)(b)",
        hold_reason=hold_reason,
    )
    for v in versions:
        msg = record.versions.add(
            value=v.value,
            hlc=v.hlc,
            content_type=v.content_type,
            subject_id=subject_id,
            subject_jurisdiction="DE",
            classification=int(classification),  # type: ignore[arg-type]
            origin_region=region,
            checksum_sha256=hashlib.sha256(v.value).digest(),
        )
        msg.dot.node_id, msg.dot.counter = v.node, v.counter
        if v.redacted:
            msg.redacted_fields.extend(v.redacted)
            if "value" in v.redacted:
                msg.value, msg.checksum_sha256 = b"", b""
    return record


class SubjectCluster(FakeCluster):
    """FakeCluster with the subject desk and exporting nodes."""

    coordinator: SubjectDesk
    nodes: dict[str, ExportingNode]  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(SubjectDesk(), ExportingNode)

    def give_exports(
        self, region: str, records: Sequence[subpb.ExportedRecord], subject_id: str = "s-1"
    ) -> None:
        self.nodes[region].exports[subject_id] = list(records)

    def receipt(
        self,
        region: str,
        erased: dict[str, int],
        kept: Sequence[tuple[str, str, str]] = (),
        keys_destroyed: int = 1,
        audit_seq: int = 10,
    ) -> subpb.RegionErasureReceipt:
        receipt = subpb.RegionErasureReceipt(
            region=region,
            node_id=region,
            started_unix_ms=RECEIVED_MS + 1_000,
            completed_unix_ms=RECEIVED_MS + 2_000,
            keys_destroyed=keys_destroyed,
            audit_seq=audit_seq,
        )
        for namespace, records in erased.items():
            receipt.erased.add(namespace=namespace, records=records)
        for namespace, key, reason in kept:
            receipt.kept.add(namespace=namespace, key=key, reason=reason)
        return receipt

    def progress(self, request_id: str, *receipts: subpb.RegionErasureReceipt) -> subpb.SubjectRequest:
        """The request after these receipts (completed when no region is left pending)."""
        state = subpb.SubjectRequest()
        state.CopyFrom(self.coordinator.requests[request_id])
        reported = {r.region for r in receipts}
        del state.receipts[:]
        state.receipts.extend(receipts)
        pending = [r for r in state.regions_pending if r not in reported]
        del state.regions_pending[:]
        state.regions_pending.extend(pending)
        if not pending:
            state.status = subpb.SUBJECT_REQUEST_STATUS_COMPLETED
            state.completed_unix_ms = RECEIVED_MS + 3_000
        return state
