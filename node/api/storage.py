"""StorageNodeService servicer: translate, delegate to node.service, map errors."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc

from domicile import errors
from domicile.authz.gate import Caller, Reason, Refusal, refuse_wrong_peer
from domicile.causality import CausalContext, Version
from domicile.identity.principal import PrincipalKind, Role
from domicile.model import Classification, check_namespace_name, check_node_id
from domicile.subjects import check_subject_id
from domicile.v1 import record_pb2 as pb
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from domicile.wire.audit import entry_to_pb, head_to_pb
from domicile.wire.limits import (
    PUT_BATCH_RECORDS_MAX,
    STORAGE_RESPONSE_BYTES_MAX,
    VIOLATIONS_MAX_DEFAULT,
    VIOLATIONS_MAX_LIMIT,
)
from domicile.wire.records import context_from_pb, context_to_pb, version_to_pb
from domicile.wire.status import violation_to_pb
from node.api.access import NodeAccess
from node.api.errors import abort_with, status_for
from node.api.read_ahead import AheadGet
from node.api.read_answers import EncodedAnswers
from node.cache.read_cache import ReadAhead
from node.compliance.audit_log import AuditLog
from node.compliance.enforcer import Audit
from node.compliance.remediation import Receipt
from node.compliance.scanner import ScanReport
from node.crypto.sealing import Sealer
from node.engine.base import Committed
from node.lifecycle.export import export_subject
from node.metrics import NodeMetrics
from node.replication.entropy import DIVERGENT_KEYS_MAX, DIVERGENT_KEYS_MAX_DEFAULT, Comparison
from node.service import DeleteCommand, PutCommand, ReadResult, StorageService

# Compares this node with a peer: (peer node id, namespaces, divergent keys listed at most).
ConsistencyCheck = Callable[[str, list[str], int], Awaitable[list[Comparison]]]
# An anti-entropy round with a peer (pulls what differs): peer node id -> comparisons.
RepairRound = Callable[[str], Awaitable[list[Comparison]]]


# The longest request id a remediation takes (it is written into every audit entry of the run).
REQUEST_ID_MAX = 128


class Remediate(Protocol):
    def __call__(
        self, request_id: str, principal: str, *, remove_last_copies: bool = False
    ) -> Awaitable[Receipt]: ...


T = TypeVar("T")
log = logging.getLogger("domicile.node.api")


@functools.lru_cache(maxsize=1024)
def _child(metric: Any, label: str) -> Any:
    """The child of a one-label metric: looked up once, not on every call (labels() takes a
    lock and builds a key each time)."""
    return metric.labels(label)


def answer_version(committed: Committed, out: pb.RecordVersion) -> None:
    """The written version into an answer: copied from the form the engine encoded it in for
    the change-log entry when the answer's version is that one (a record stored as written),
    else encoded (a sealed record is answered with the value the client wrote)."""
    version = committed.mutation.version
    known = committed.encoded
    if known is not None and known[0] is version:
        out.CopyFrom(known[1])
    else:
        version_to_pb(version, out)


async def guarded(
    metrics: NodeMetrics,
    method: str,
    context: grpc.aio.ServicerContext,
    default_deadline_s: float,
    work: Callable[[], Awaitable[T]],
) -> T:
    """Runs `work` under the call's deadline (or the default one when the caller set none),
    records latency, and turns domain errors into statuses.

    gRPC enforces a deadline the caller set: when it passes, gRPC cancels the call's task, and
    that cancellation is counted as DEADLINE_EXCEEDED (the caller hears it from its own side).
    Only a call without one gets a timer here, for the default deadline: a timer per call cost
    a measurable share of a Put, for a deadline gRPC already keeps."""
    started = time.perf_counter()
    remaining = context.time_remaining()
    try:
        if remaining is None:
            # A timeout scope, not wait_for: on Python 3.11 wait_for runs the work in a task of its own.
            async with asyncio.timeout(default_deadline_s):
                return await work()
        if remaining <= 0:
            raise TimeoutError  # expired on arrival: nothing is done
        return await work()
    except errors.DomicileError as exc:
        metrics.rpc_errors.labels(method, status_for(exc).name).inc()
        await abort_with(context, exc)
        raise  # abort raises; this keeps type checkers aware
    except TimeoutError:
        timeout = default_deadline_s if remaining is None else max(remaining, 0.0)
        metrics.rpc_errors.labels(method, "DEADLINE_EXCEEDED").inc()
        await abort_with(
            context, errors.DeadlineExceeded(f"{method} did not complete within {timeout:.3f} s")
        )
        raise
    except asyncio.CancelledError:
        metrics.rpc_errors.labels(method, _cancelled_code(context, remaining)).inc()
        raise
    except grpc.aio.AbortError:
        raise
    except Exception:
        # A bug, not a bad request: counted so the error-ratio alert sees it; gRPC answers INTERNAL.
        metrics.rpc_errors.labels(method, "INTERNAL").inc()
        log.exception("%s failed unexpectedly", method)
        raise
    finally:
        _child(metrics.rpc_latency, method).observe(time.perf_counter() - started)


def _cancelled_code(context: grpc.aio.ServicerContext, remaining: float | None) -> str:
    """What a cancelled call is counted as: DEADLINE_EXCEEDED when gRPC cancelled it because the
    caller's deadline passed, CANCELLED when the caller went away (or the node is stopping)."""
    if remaining is None:
        return "CANCELLED"
    left = context.time_remaining()
    return "DEADLINE_EXCEEDED" if left is not None and left <= 0 else "CANCELLED"


async def guarded_stream(
    metrics: NodeMetrics, method: str, context: grpc.aio.ServicerContext, stream: AsyncIterator[T]
) -> AsyncIterator[T]:
    """`guarded` for server-streaming calls: latency, domain errors as statuses, bugs counted."""
    started = time.perf_counter()
    try:
        async for item in stream:
            yield item
    except errors.DomicileError as exc:
        metrics.rpc_errors.labels(method, status_for(exc).name).inc()
        await abort_with(context, exc)
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception:
        metrics.rpc_errors.labels(method, "INTERNAL").inc()
        log.exception("%s failed unexpectedly", method)
        raise
    finally:
        _child(metrics.rpc_latency, method).observe(time.perf_counter() - started)


# By wire value: a dict lookup per request costs less than the enum's own call.
_CLASSIFICATIONS = {int(c): c for c in Classification}


def _classification(value: int) -> Classification:
    found = _CLASSIFICATIONS.get(value)
    if found is None:
        raise errors.InvalidArgument(
            f"unknown classification value {value}; allowed: 0 (namespace default) to 6"
        )
    return found


AUDIT_READ_BATCH = 1000
# An export message holds at most this many records, and is sent once it passes
# EXPORT_MESSAGE_BYTES: a record can weigh up to read_record_bytes_max (16 MiB), so a count alone
# could make a message no server sends (STORAGE_RESPONSE_BYTES_MAX, 32 MiB); one record over the
# budget still fits alone.
EXPORT_BATCH = 100
EXPORT_MESSAGE_BYTES = STORAGE_RESPONSE_BYTES_MAX // 4


def _add_versions(versions: Sequence[Version], redacted: Sequence[tuple[str, ...]], out: Any) -> None:
    """Versions as answered, each with the fields the policy removed from it (if any)."""
    for i, v in enumerate(versions):
        msg = version_to_pb(v, out.add())
        if i < len(redacted) and redacted[i]:
            msg.redacted_fields.extend(redacted[i])


def _fill_read(result: ReadResult, versions: Any, context: Any) -> None:
    _add_versions(result.versions, result.redacted, versions)
    context_to_pb(result.context, context)


def _request_context(
    service: StorageService, request: spb.PutRequest | spb.DeleteRequest
) -> CausalContext | None:
    """The context a write supersedes, from its token (checked against the cluster key, the
    namespace and the key); None when it has none. The plain `context` field is refused: nothing
    authenticates it, and a context naming another node's counters (which no receiver can check)
    would make every node drop that node's later writes to the key."""
    if request.HasField("context"):
        # A malformed one is reported as such first; a well-formed one is still unsigned.
        context_from_pb(request.context, service.limits)
        raise errors.InvalidArgument(
            "the plain context field is no longer accepted (it is not authenticated): pass the "
            "context_token of an earlier Get, Put, Delete or Scan of this key, unchanged"
        )
    if request.context_token:
        return service.tokens.open(request.namespace, request.key, request.context_token, service.limits)
    return None


def _scan_report_pb(report: ScanReport) -> spb.ScanComplianceResponse:
    response = spb.ScanComplianceResponse(
        region=report.region,
        policy_version=report.policy_version,
        versions_checked=report.versions_checked,
        violations_total=report.violations_total,
        violations_held=report.violations_held,
    )
    for v in report.violations:
        violation_to_pb(v, response.violations.add())
    return response


def _receipt_pb(receipt: Receipt, removed_max: int) -> spb.RemediateComplianceResponse:
    response = spb.RemediateComplianceResponse(
        request_id=receipt.request_id,
        region=receipt.region,
        node_id=receipt.node_id,
        policy_version=receipt.policy_version,
        copies_removed=len(receipt.removed),
        versions_removed=receipt.versions_removed,
        kept_last_copies=receipt.kept_last_copies,
        receipt_audit_seq=receipt.receipt_seq,
        violations_after=receipt.violations_after,
        kept_held=receipt.kept_held,
    )
    for copy in receipt.removed[:removed_max]:
        violation_to_pb(copy.violation, response.removed.add())
    for copy in receipt.held[:removed_max]:
        violation_to_pb(copy.violation, response.held.add())
    return response


class StorageServicer(spb_grpc.StorageNodeServiceServicer):
    def __init__(
        self,
        service: StorageService,
        status: Callable[[spb.GetNodeStatusRequest], Awaitable[spb.GetNodeStatusResponse]],
        audit: AuditLog,
        scan: Callable[[int, str], Awaitable[ScanReport]],
        sealer: Sealer,
        access: NodeAccess,
        consistency: ConsistencyCheck | None = None,
        repair: RepairRound | None = None,
        remediate: Remediate | None = None,
    ) -> None:
        self._remediate = remediate
        self._consistency = consistency
        self._repair = repair
        self._sealer = sealer
        self._access = access
        self.service = service
        self.metrics = service.metrics
        self.deadline_s = service.limits.request_deadline_default_s
        self._status = status
        self._audit = audit
        self._scan = scan
        self.answers = EncodedAnswers()

    def _superseded(
        self, request: spb.PutRequest | spb.DeleteRequest, caller: Caller, action: str
    ) -> CausalContext | None:
        """The context a write supersedes. A context token that does not open is refused like
        bad input (InvalidArgument), and also counted and audited as a refusal with the caller's
        identity: it is a context the cluster never gave the caller for this record."""
        try:
            return _request_context(self.service, request)
        except errors.InvalidArgument as error:
            if request.context_token and not request.HasField("context"):
                refusal = Refusal(
                    action, Reason.CONTEXT_TOKEN, caller.identity, error.message, request.namespace
                )
                self._access.gate.on_refusal(refusal)
            raise

    def _put_command(self, request: spb.PutRequest, caller: Caller) -> PutCommand:
        return PutCommand(
            namespace=request.namespace,
            key=request.key,
            value=request.value,
            content_type=request.content_type,
            context=self._superseded(request, caller, "storage.Put"),
            subject_id=request.subject_id,
            subject_jurisdiction=request.subject_jurisdiction,
            classification=_classification(request.classification),
            principal=caller.identity,
            request_id=request.request_id,
        )

    def _put_response(self, request: spb.PutRequest, committed: Committed, out: spb.PutResponse) -> None:
        out.lsn = committed.mutation.lsn
        out.region = self.service.region
        answer_version(committed, out.version)
        context_to_pb(committed.state.context, out.context)
        out.context_token = self.service.tokens.issue_pb(request.namespace, request.key, out.context)

    async def Put(self, request: spb.PutRequest, context: grpc.aio.ServicerContext) -> spb.PutResponse:
        async def work() -> spb.PutResponse:
            caller = self._access.namespace(context, "storage.Put", request.namespace)
            committed = await self.service.put(self._put_command(request, caller))
            response = spb.PutResponse()
            self._put_response(request, committed, response)
            return response

        return await guarded(self.metrics, "Put", context, self.deadline_s, work)

    async def PutBatch(
        self, request: spb.PutBatchRequest, context: grpc.aio.ServicerContext
    ) -> spb.PutBatchResponse:
        async def work() -> spb.PutBatchResponse:
            puts = request.puts
            if not 1 <= len(puts) <= PUT_BATCH_RECORDS_MAX:
                raise errors.InvalidArgument(
                    f"PutBatch carries {len(puts)} records; it takes 1 to {PUT_BATCH_RECORDS_MAX} "
                    "(split larger loads into several calls)"
                )
            # The call is authorized at this region; each record is then authorized, checked
            # and decided as a Put of its own: a refusal is that record's result, not the call's.
            self._access.region(context, "storage.PutBatch")
            callers: dict[str, Caller | errors.DomicileError] = {}
            commands: list[PutCommand | errors.DomicileError] = []
            for put in puts:
                caller = callers.get(put.namespace)
                if caller is None:
                    try:
                        caller = self._access.namespace(context, "storage.Put", put.namespace)
                    except errors.DomicileError as error:
                        caller = error
                    callers[put.namespace] = caller
                if isinstance(caller, errors.DomicileError):
                    commands.append(caller)
                    continue
                try:
                    commands.append(self._put_command(put, caller))
                except errors.DomicileError as error:
                    commands.append(error)
            valid = [c for c in commands if isinstance(c, PutCommand)]
            outcomes = iter(await self.service.put_batch(valid) if valid else [])
            response = spb.PutBatchResponse()
            for put, command in zip(puts, commands, strict=True):
                result = response.results.add()
                outcome = command if isinstance(command, errors.DomicileError) else next(outcomes)
                if isinstance(outcome, errors.DomicileError):
                    result.code = status_for(outcome).value[0]
                    result.message = outcome.message
                    if isinstance(outcome, errors.PlacementRefused):
                        result.allowed_regions.extend(outcome.allowed_regions)
                else:
                    self._put_response(put, outcome, result.put)
            return response

        return await guarded(self.metrics, "PutBatch", context, self.deadline_s, work)

    # The generated base class knows only the message; the bytes are sent as they are.
    async def Get(  # type: ignore[override]
        self, request: spb.GetRequest | AheadGet, context: grpc.aio.ServicerContext
    ) -> spb.GetResponse | bytes:
        """The answer, or its bytes when they are the same as an earlier hit's: storage calls are
        always served through node.api.limits.MessageLimits, which sends bytes as they are."""
        # The cache lookup is sent first, so that Redis answers while the call's deadline scope,
        # authentication and authorization run; its reply is used only once they passed (and
        # the request was checked), and dropped unseen otherwise. The node's call layer sends it
        # earlier still, as the request is decoded, and drops it itself (node/api/read_ahead.py).
        get: spb.GetRequest
        ahead: ReadAhead | None
        if isinstance(request, AheadGet):
            get, ahead, own = request.request, request.ahead, False
        else:
            get, ahead, own = request, self.service.read_ahead(request.namespace, request.key), True

        async def work() -> spb.GetResponse | bytes:
            caller = self._access.namespace(context, "storage.Get", get.namespace)
            result = await self.service.get(get.namespace, get.key, caller.identity, ahead)
            if result.source is None:
                return self._get_response(get, result)
            answers = self.answers
            kept = answers.of_result(result)
            if kept is not None:
                return kept
            # Everything the answer's bytes depend on (node/api/read_answers.py).
            key = (get.namespace, get.key, result.source, result.redacted)
            kept = answers.get(key)
            if kept is None:
                kept = answers.keep(key, self._get_response(get, result).SerializeToString())
            answers.keep_for_result(result, kept)
            return kept

        if ahead is None or not own:
            return await guarded(self.metrics, "Get", context, self.deadline_s, work)
        try:
            return await guarded(self.metrics, "Get", context, self.deadline_s, work)
        finally:
            ahead.drop()  # a no-op when the lookup took its reply

    def _get_response(self, request: spb.GetRequest, result: ReadResult) -> spb.GetResponse:
        response = spb.GetResponse(found=result.found, region=self.service.region)
        _fill_read(result, response.versions, response.context)
        # From the context as answered: its protobuf form is built once, for both.
        response.context_token = self.service.tokens.issue_pb(
            request.namespace, request.key, response.context
        )
        return response

    async def Delete(
        self, request: spb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> spb.DeleteResponse:
        async def work() -> spb.DeleteResponse:
            caller = self._access.namespace(context, "storage.Delete", request.namespace)
            ctx = self._superseded(request, caller, "storage.Delete")
            committed = await self.service.delete(
                DeleteCommand(
                    namespace=request.namespace,
                    key=request.key,
                    context=ctx,
                    subject_id=request.subject_id,
                    subject_jurisdiction=request.subject_jurisdiction,
                    principal=caller.identity,
                    request_id=request.request_id,
                )
            )
            response = spb.DeleteResponse(existed=committed.had_live, lsn=committed.mutation.lsn)
            answer_version(committed, response.version)
            context_to_pb(committed.state.context, response.context)
            response.context_token = self.service.tokens.issue_pb(
                request.namespace, request.key, response.context
            )
            return response

        return await guarded(self.metrics, "Delete", context, self.deadline_s, work)

    async def Scan(self, request: spb.ScanRequest, context: grpc.aio.ServicerContext) -> spb.ScanResponse:
        async def work() -> spb.ScanResponse:
            caller = self._access.namespace(context, "storage.Scan", request.namespace)
            page = await self.service.scan(
                request.namespace,
                request.key_prefix,
                request.page_size,
                request.page_token,
                caller.identity,
            )
            response = spb.ScanResponse(next_page_token=page.next_page_token)
            for key, result in page.items:
                item = response.items.add(key=key)
                _fill_read(result, item.versions, item.context)
                item.context_token = self.service.tokens.issue_pb(request.namespace, key, item.context)
            return response

        return await guarded(self.metrics, "Scan", context, self.deadline_s, work)

    async def GetNodeStatus(
        self, request: spb.GetNodeStatusRequest, context: grpc.aio.ServicerContext
    ) -> spb.GetNodeStatusResponse:
        async def work() -> spb.GetNodeStatusResponse:
            caller = self._access.region(context, "storage.GetNodeStatus")
            self._authorize_store_walk(context, caller, request)
            return await self._status(request)

        return await guarded(self.metrics, "GetNodeStatus", context, self.deadline_s, work)

    def _authorize_store_walk(
        self, context: grpc.aio.ServicerContext, caller: Caller, request: spb.GetNodeStatusRequest
    ) -> None:
        """What a status request that walks the store needs beyond reading the status: its
        counts per namespace and classification are a store-wide walk, authorized as a
        compliance scan is (storage.ScanCompliance); its candidate schemas open every stored
        value of their namespaces, and a schema can test a value (`const`, `pattern`), so each
        named namespace is authorized as a read of its records (storage.Scan). The coordinator
        (its schema gate, by its certificate) may ask for both. Refusals are counted and
        audited by the gate, before anything is read."""
        if not (request.namespace_stats or request.candidate_schemas):
            return
        principal = caller.principal
        if principal is not None and principal.kind is PrincipalKind.COORDINATOR:
            return
        self._access.region(context, "storage.ScanCompliance")
        for namespace in sorted(request.candidate_schemas):
            self._access.namespace(context, "storage.Scan", namespace)

    async def CheckConsistency(
        self, request: spb.CheckConsistencyRequest, context: grpc.aio.ServicerContext
    ) -> spb.CheckConsistencyResponse:
        async def work() -> spb.CheckConsistencyResponse:
            caller = self._access.region(context, "storage.CheckConsistency")
            if self._consistency is None:
                raise errors.FailedPrecondition("this node runs no anti-entropy, so it cannot compare")
            check_node_id(request.peer_node_id)
            for name in request.namespaces:
                check_namespace_name(name)
            limit = request.divergent_keys_max or DIVERGENT_KEYS_MAX_DEFAULT
            if limit > DIVERGENT_KEYS_MAX:
                raise errors.InvalidArgument(
                    f"divergent_keys_max {limit} is too large; use 1 to {DIVERGENT_KEYS_MAX} (0: "
                    f"{DIVERGENT_KEYS_MAX_DEFAULT})"
                )
            if request.repair:
                comparisons = await self._repair_with(caller, request.peer_node_id, request.namespaces)
            else:
                comparisons = await self._consistency(request.peer_node_id, list(request.namespaces), limit)
            response = spb.CheckConsistencyResponse(
                node_id=self.service.node_id, peer_node_id=request.peer_node_id
            )
            for c in comparisons:
                response.namespaces.add(
                    namespace=c.namespace,
                    keys_compared=c.keys,
                    keys_divergent=c.divergent_total,
                    divergent_keys=c.divergent[:limit],
                    keys_repaired=c.repaired,
                )
            return response

        return await guarded(self.metrics, "CheckConsistency", context, self.deadline_s, work)

    async def _repair_with(
        self, caller: Caller, peer_node_id: str, namespaces: Sequence[str]
    ) -> list[Comparison]:
        # A repair moves records: operators only (an auditor may compare, not change). Refused
        # through the gate, so that it is counted and audited like every refusal.
        principal = caller.principal
        if principal is not None and Role.OPERATOR not in principal.roles:
            raise refuse_wrong_peer(
                self._access.gate,
                "storage.CheckConsistency",
                caller,
                f"{caller.identity} may compare replicas but not repair them; repair needs the operator role",
            )
        if self._repair is None:
            raise errors.FailedPrecondition("this node runs no anti-entropy, so it cannot repair")
        comparisons = await self._repair(peer_node_id)
        return [c for c in comparisons if not namespaces or c.namespace in namespaces]

    async def ScanCompliance(
        self, request: spb.ScanComplianceRequest, context: grpc.aio.ServicerContext
    ) -> spb.ScanComplianceResponse:
        async def work() -> spb.ScanComplianceResponse:
            caller = self._access.region(context, "storage.ScanCompliance")
            limit = request.violations_max or VIOLATIONS_MAX_DEFAULT
            if limit > VIOLATIONS_MAX_LIMIT:
                raise errors.InvalidArgument(
                    f"violations_max {limit} is too large; use 1 to {VIOLATIONS_MAX_LIMIT} "
                    "(0 for the default); the total is counted either way"
                )
            report = await self._scan(limit, caller.identity)
            return _scan_report_pb(report)

        # A scan walks the whole store: it gets the caller's deadline, or no server default.
        remaining = context.time_remaining()
        deadline_s = 3600.0 if remaining is None else remaining
        return await guarded(self.metrics, "ScanCompliance", context, deadline_s, work)

    async def RemediateCompliance(
        self, request: spb.RemediateComplianceRequest, context: grpc.aio.ServicerContext
    ) -> spb.RemediateComplianceResponse:
        async def work() -> spb.RemediateComplianceResponse:
            caller = self._access.region(context, "storage.RemediateCompliance")
            limit = request.removed_max or VIOLATIONS_MAX_DEFAULT
            if limit > VIOLATIONS_MAX_LIMIT:
                raise errors.InvalidArgument(
                    f"removed_max {limit} is too large; use 1 to {VIOLATIONS_MAX_LIMIT} "
                    "(0 for the default); the total is counted either way"
                )
            rid = request.request_id
            if len(rid) > REQUEST_ID_MAX or not all(33 <= ord(c) < 127 for c in rid):
                raise errors.InvalidArgument(
                    f"request_id {rid[:40]!r} is not allowed: at most {REQUEST_ID_MAX} printable ASCII "
                    "characters without spaces (empty: the node makes one); nothing was removed"
                )
            if self._remediate is None:
                raise errors.FailedPrecondition("this node does not remediate")
            receipt = await self._remediate(
                request.request_id, caller.identity, remove_last_copies=request.remove_last_copies
            )
            return _receipt_pb(receipt, limit)

        # A remediation walks the whole store, as a scan does.
        remaining = context.time_remaining()
        deadline_s = 3600.0 if remaining is None else remaining
        return await guarded(self.metrics, "RemediateCompliance", context, deadline_s, work)

    async def ReadAuditLog(
        self, request: spb.ReadAuditLogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[spb.ReadAuditLogResponse]:
        async for response in guarded_stream(
            self.metrics, "ReadAuditLog", context, self._read_audit_log(request, context)
        ):
            yield response

    async def _read_audit_log(
        self, request: spb.ReadAuditLogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[spb.ReadAuditLogResponse]:
        caller = self._access.region(context, "storage.ReadAuditLog")
        # Reading the trail is itself audited, and durable before anything is returned.
        await self.service.enforcer.event(
            Audit.AUDIT_READ,
            principal=caller.identity,
            detail=f"after_seq={request.after_seq} limit={request.limit} tail={request.tail}",
        )
        # Signing the head is Ed25519 work: off the event loop.
        head = await self.service.offload.run(self._audit.head)
        end = head.size
        after = request.after_seq
        if request.tail:
            after = max(0, end - (request.limit or end))
        elif request.limit:
            end = min(end, after + request.limit)
        first = spb.ReadAuditLogResponse()
        head_to_pb(head, first.head)
        yield first
        while after < end:
            batch = await asyncio.to_thread(self._audit.read, after, min(AUDIT_READ_BATCH, end - after))
            if not batch:
                break
            response = spb.ReadAuditLogResponse()
            for entry in batch:
                entry_to_pb(entry, response.records.add())
            after = batch[-1].seq
            yield response

    async def ExportSubject(
        self, request: spb.ExportSubjectRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[spb.ExportSubjectResponse]:
        async for response in guarded_stream(
            self.metrics, "ExportSubject", context, self._export_subject(request, context)
        ):
            yield response

    async def _export_subject(
        self, request: spb.ExportSubjectRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[spb.ExportSubjectResponse]:
        caller = self._access.region(context, "storage.ExportSubject")
        check_subject_id(request.subject_id)
        if len(request.request_id) > 64:
            raise errors.InvalidArgument("request_id is longer than 64 characters")
        service = self.service
        copies = await export_subject(
            subject_id=request.subject_id,
            region=service.region,
            engine=service.engine,
            view=service.view,
            enforcer=service.enforcer,
            sealer=self._sealer,
            principal=caller.identity,
            request_id=request.request_id,
            offload=service.offload,
        )
        response = spb.ExportSubjectResponse()
        size = 0
        for c in copies:
            if response.records and (len(response.records) >= EXPORT_BATCH or size >= EXPORT_MESSAGE_BYTES):
                yield response
                response = spb.ExportSubjectResponse()
                size = 0
            record = response.records.add(
                namespace=c.namespace,
                key=c.key,
                classification=int(c.classification),  # type: ignore[arg-type]
                region=c.region,
                retention_class=c.retention_class,
                retention_period_seconds=c.retention_period_s,
                legal_basis=c.legal_basis,
                hold_reason=c.hold_reason,
            )
            _add_versions(c.versions, c.redacted, record.versions)
            size += record.ByteSize()
        if response.records:
            yield response
