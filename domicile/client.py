"""Python SDK: `Client` (blocking) and `AsyncClient` (asyncio) with the same API.

Both ask the coordinator for the topology and send each call straight to a node: an explicit
`region=` wins; otherwise the client's preferred region when the namespace's scope allows it,
else the first up node of a region that may hold the namespace. A write refused because the
chosen region may not hold the record is retried once at a region the refusal names. Results
are plain dataclasses built from `domicile.causality` types; failures are `domicile.errors`
types. Every call has one deadline that covers its retries and the topology fetch; calls that return
a lot (the audit log) are made page by page, each page with its own deadline.

Data-subject requests (erasure, access) and legal holds are kept by the coordinator; a subject's
records are exported region by region, each streamed from that region's node.

    with Client("127.0.0.1:7400", region="eu-west-1") as client:
        client.put("customers_eu", "c-1", b"...", subject_id="c-1", subject_jurisdiction="DE")
        result = client.get("customers_eu", "c-1")
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from domicile.audit import SignedHead, StoredEntry
from domicile.causality import CausalContext
from domicile.errors import (
    DeadlineExceeded,
    DomicileError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PlacementRefused,
    Unavailable,
)
from domicile.model import Classification
from domicile.results import (
    ComplianceReport,
    ComplianceViolation,
    DeleteResult,
    ExportedCopy,
    GetResult,
    LinkState,
    NodeStatus,
    PutResult,
    ReadVersion,
    ScanItem,
)
from domicile.subjects import HoldScope, LegalHold, SubjectRequest
from domicile.topology import Link, NodeHealth, NodeInfo, Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cgrpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as sgrpc
from domicile.wire.audit import audit_page_from_pb, head_from_pb
from domicile.wire.errors import error_from_rpc
from domicile.wire.limits import (
    AUDIT_PAGE_ENTRIES,
    AUDIT_PAGE_ENTRIES_MAX,
    AUDIT_TAIL_ENTRIES_MAX,
    CLIENT_MESSAGE_BYTES_MAX,
    SUBJECT_REQUESTS_LIMIT_DEFAULT,
    SUBJECT_REQUESTS_LIMIT_MAX,
    VIOLATIONS_MAX_DEFAULT,
    VIOLATIONS_MAX_LIMIT,
)
from domicile.wire.records import (
    context_from_token,
    context_token,
    delete_result_from_pb,
    get_result_from_pb,
    put_result_from_pb,
    scan_items_from_pb,
)
from domicile.wire.requests import (
    access_request,
    check_name,
    check_page_size,
    check_region_name,
    check_violations_max,
    complete_request,
    delete_request,
    erase_request,
    export_request,
    id_arg,
    list_requests_request,
    place_hold_request,
    put_request,
    release_hold_request,
)
from domicile.wire.status import compliance_report_from_pb, node_status_from_pb
from domicile.wire.subjects import exported_copies_from_pb, hold_from_pb, hold_of, request_from_pb, request_of
from domicile.wire.topology import topology_from_pb

__all__ = [
    "AUDIT_PAGE_ENTRIES",
    "AUDIT_PAGE_ENTRIES_MAX",
    "AUDIT_TAIL_ENTRIES_MAX",
    "DEFAULT_COORDINATOR",
    "SUBJECT_REQUESTS_LIMIT_DEFAULT",
    "SUBJECT_REQUESTS_LIMIT_MAX",
    "VIOLATIONS_MAX_DEFAULT",
    "VIOLATIONS_MAX_LIMIT",
    "AsyncClient",
    "Client",
    "ComplianceReport",
    "ComplianceViolation",
    "DeleteResult",
    "ExportedCopy",
    "GetResult",
    "LinkInfo",
    "LinkState",
    "NodeHealth",
    "NodeInfo",
    "NodeStatus",
    "PutResult",
    "ReadVersion",
    "RetryPolicy",
    "ScanItem",
    "Topology",
    "context_from_token",
    "context_token",
    "route",
    "topology_from_pb",
]

DEFAULT_COORDINATOR = "127.0.0.1:7400"
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", CLIENT_MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", CLIENT_MESSAGE_BYTES_MAX),
)

R = TypeVar("R")


# ---------------------------------------------------------------------------------------------
# Topology


# The SDK's name for a replication link since before the topology types were merged.
LinkInfo = Link


def route(
    topology: Topology,
    namespace: str | None,
    *,
    region: str | None = None,
    preferred_region: str | None = None,
    allowed_regions: Sequence[str] | None = None,
    avoid: Collection[str] = (),
    node_id: str | None = None,
) -> NodeInfo:
    """The node a call goes to.

    `region` (explicit) restricts the choice to that region. Otherwise the candidates are the
    nodes of `allowed_regions` (the regions a refusal named) or of the namespace's scope (every
    region for a global or unknown namespace). Among them: nodes not in `avoid` (node ids that
    just failed), then up nodes, then the preferred region, then scope order. Nodes the
    coordinator reports down stay as a last resort because its view can lag behind a restart.
    `node_id` asks for one node by id.
    """
    if node_id is not None:
        found = next((n for n in topology.nodes if n.node_id == node_id), None)
        if found is None:
            known_nodes = ", ".join(n.node_id for n in topology.nodes) or "none"
            raise InvalidArgument(f"unknown node {node_id!r}; registered nodes: {known_nodes}")
        return found
    known = topology.region_names()
    if preferred_region is not None and preferred_region not in known:
        raise InvalidArgument(
            f"client region {preferred_region!r} is not a region of the cluster; "
            f"regions: {', '.join(known) or 'none'}"
        )
    if region is not None:
        if region not in known:
            raise InvalidArgument(f"unknown region {region!r}; regions: {', '.join(known) or 'none'}")
        scope = [region]
        what = f"region {region}"
    elif allowed_regions is not None:
        scope = [r for r in allowed_regions if r in known]
        what = f"the regions that may hold the record ({', '.join(allowed_regions) or 'none'})"
    else:
        spec = topology.namespace(namespace) if namespace else None
        scope = known if spec is None or spec.is_global else list(spec.regions)
        what = f"the regions that may hold namespace {namespace}" if spec else "the cluster"
        what = f"{what} ({', '.join(scope) or 'none'})"
    rank = {r: i for i, r in enumerate(scope)}
    candidates = [n for n in topology.nodes if n.region in rank]
    if not candidates:
        raise Unavailable(f"no node is registered in {what}")
    return min(
        candidates,
        key=lambda n: (
            n.node_id in avoid,
            n.health is not NodeHealth.UP,
            n.region != preferred_region,
            rank[n.region],
            n.node_id,
        ),
    )


# ---------------------------------------------------------------------------------------------
# Requests


def _check_known_region(topology: Topology, region: str) -> None:
    known = topology.region_names()
    if region not in known:
        raise InvalidArgument(f"unknown region {region!r}; regions: {', '.join(known) or 'none'}")


class _AuditCursor:
    """Where a paged read of an audit log stands: the next request and when it is done.

    Pages go by seq: page k asks for the entries after `after_seq`, at most page_entries seq
    positions. A page may hold fewer entries (entries deleted from the log leave gaps) or run a
    little past them, so the next page starts after both. The read ends at the size of the head
    the first page carried: each page is itself audited, so a read that chased the growing end
    of the log could go on for ever.
    """

    def __init__(self, region: str, after_seq: int, limit: int, tail: bool, page_entries: int) -> None:
        check_region_name(region)
        if after_seq < 0:
            raise InvalidArgument(f"after_seq is {after_seq}; it must be 0 or more")
        if limit < 0:
            raise InvalidArgument(f"limit is {limit}; use 0 (every entry) or more")
        if tail and not 1 <= limit <= AUDIT_TAIL_ENTRIES_MAX:
            raise InvalidArgument(f"a tail read needs a limit of 1 to {AUDIT_TAIL_ENTRIES_MAX}; got {limit}")
        if not 1 <= page_entries <= AUDIT_PAGE_ENTRIES_MAX:
            raise InvalidArgument(f"page_entries is {page_entries}; use 1 to {AUDIT_PAGE_ENTRIES_MAX}")
        self.region = region
        self.after_seq = after_seq
        self.remaining: int | None = limit or None
        self.tail = tail
        self.page_entries = page_entries
        self.end_seq: int | None = None
        self.done = False
        self._requested = 0

    def request(self) -> spb.ReadAuditLogRequest:
        if self.tail:
            return spb.ReadAuditLogRequest(limit=self.remaining or 0, tail=True)
        self._requested = min(self.page_entries, self.remaining or self.page_entries)
        return spb.ReadAuditLogRequest(after_seq=self.after_seq, limit=self._requested)

    def advance(self, head: SignedHead | None, entries: list[StoredEntry]) -> list[StoredEntry]:
        """Takes in a page; returns its entries that belong to the read."""
        if self.tail:
            self.done = True
            return entries
        if self.end_seq is None:
            self.end_seq = head.size if head is not None else None
        if self.end_seq is not None:
            entries = [e for e in entries if e.seq <= self.end_seq]
        if self.remaining is not None:
            entries = entries[: self.remaining]
            self.remaining -= len(entries)
        self.after_seq = max([self.after_seq + self._requested, *(e.seq for e in entries)])
        if self.remaining == 0:
            self.done = True
        elif self.end_seq is not None:
            self.done = self.after_seq >= self.end_seq
        else:
            # Without a head, only an empty page says where the log ends.
            self.done = not entries
        return entries

    def what(self) -> str:
        return f"read audit log of {self.region}"


def _audit_rpc(req: spb.ReadAuditLogRequest) -> Callable[[Any, float], list[spb.ReadAuditLogResponse]]:
    # A page is read to its end inside the call, so that a broken stream is retried like any call.
    return lambda stub, timeout: list(stub.ReadAuditLog(req, timeout=timeout))


def _audit_rpc_async(
    req: spb.ReadAuditLogRequest,
) -> Callable[[Any, float], Awaitable[list[spb.ReadAuditLogResponse]]]:
    async def rpc(stub: Any, seconds: float) -> list[spb.ReadAuditLogResponse]:
        return [msg async for msg in stub.ReadAuditLog(req, timeout=seconds)]

    return rpc


def _scan_rpc(req: spb.ScanRequest) -> Callable[[Any, float], Any]:
    return lambda stub, timeout: stub.Scan(req, timeout=timeout)


def _export_open(req: spb.ExportSubjectRequest) -> Callable[[Any, float], tuple[Any, Any]]:
    # The first message is read inside the call, so that a node that cannot be reached or
    # refuses is retried (or routed around) like any call; once records arrive it cannot be.
    def rpc(stub: Any, timeout: float) -> tuple[Any, spb.ExportSubjectResponse | None]:
        call = stub.ExportSubject(req, timeout=timeout)
        return call, next(call, None)

    return rpc


def _export_open_async(
    req: spb.ExportSubjectRequest,
) -> Callable[[Any, float], Awaitable[tuple[Any, spb.ExportSubjectResponse | None]]]:
    async def rpc(stub: Any, seconds: float) -> tuple[Any, spb.ExportSubjectResponse | None]:
        call = stub.ExportSubject(req, timeout=seconds)
        first = await call.read()
        return call, None if first is grpc.aio.EOF else first

    return rpc


# ---------------------------------------------------------------------------------------------
# Retries and deadlines


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of errors whose `retriable` is True: bounded attempts, exponential backoff with
    full jitter. The call's deadline bounds the total as well.

    Writes are retried too. A write whose first attempt was applied but never acknowledged
    (the connection broke, the deadline passed) is then applied twice: harmless in an lww
    namespace, two equal siblings in a siblings namespace. attempts_max=1 rules that out.
    """

    attempts_max: int = 4
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise InvalidArgument(f"attempts_max is {self.attempts_max}; at least 1 is required")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise InvalidArgument("backoff times must satisfy 0 <= backoff_initial_s <= backoff_max_s")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Pause before retry number `retry` (1-based)."""
        cap = min(self.backoff_max_s, self.backoff_initial_s * self.multiplier ** (retry - 1))
        return rng.uniform(0, cap)


class _Deadline:
    def __init__(self, seconds: float, what: str) -> None:
        self._seconds = seconds
        self._end = time.monotonic() + seconds
        self._what = what

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"{self._what}: the deadline of {self._seconds:g}s passed")
        return left


@dataclass
class _Attempt:
    """What the retry loop knows between attempts of one call."""

    region: str | None
    write: bool
    allowed_regions: tuple[str, ...] | None = None
    placement_retried: bool = False
    retries: int = 0
    refresh: bool = False
    node_id: str | None = None
    avoid: set[str] = field(default_factory=set)

    def next_step(self, error: DomicileError, node: NodeInfo | None, policy: RetryPolicy) -> bool:
        """Updates the plan after `error`; False when the error must be raised."""
        if (
            isinstance(error, PlacementRefused)
            and self.write
            and self.region is None
            and not self.placement_retried
            and error.allowed_regions
        ):
            self.placement_retried = True
            self.allowed_regions = error.allowed_regions
            return True
        if not error.retriable or self.retries + 1 >= policy.attempts_max:
            return False
        self.retries += 1
        if isinstance(error, Unavailable):
            self.refresh = True
            if node is not None:
                self.avoid.add(node.node_id)
        return True

    def backoff_s(self, error: DomicileError, policy: RetryPolicy, rng: random.Random) -> float:
        return 0.0 if isinstance(error, PlacementRefused) else policy.backoff_s(self.retries, rng)


def _call_deadline(default_s: float, override_s: float | None, what: str) -> _Deadline:
    if override_s is not None and not override_s > 0:
        raise InvalidArgument(f"deadline_s is {override_s}; it must be positive")
    return _Deadline(override_s or default_s, what)


def _options(deadline_s: float, retry: RetryPolicy | None, topology_ttl_s: float) -> RetryPolicy:
    if not deadline_s > 0:
        raise InvalidArgument(f"deadline_s is {deadline_s}; it must be positive")
    if topology_ttl_s < 0:
        raise InvalidArgument(f"topology_ttl_s is {topology_ttl_s}; it must be 0 or more")
    return retry or RetryPolicy()


# ---------------------------------------------------------------------------------------------
# Blocking client


class Client:
    """Blocking client. Thread-safe; one instance can serve a whole process."""

    def __init__(
        self,
        coordinator: str = DEFAULT_COORDINATOR,
        *,
        region: str | None = None,
        deadline_s: float = 5.0,
        retry: RetryPolicy | None = None,
        topology_ttl_s: float = 5.0,
        channels_max: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.region = region
        self.deadline_s = deadline_s
        self.retry = _options(deadline_s, retry, topology_ttl_s)
        self._ttl_s = topology_ttl_s
        self._channels_max = max(1, channels_max)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._channels: OrderedDict[str, Any] = OrderedDict()
        self._topology: Topology | None = None
        self._fetched_at = 0.0
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), OrderedDict()
        for channel in channels:
            channel.close()

    def _channel(self, address: str) -> Any:
        with self._lock:
            if self._closed:
                raise FailedPrecondition("the client is closed")
            channel = self._channels.get(address)
            if channel is not None:
                self._channels.move_to_end(address)
                return channel
            channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            self._channels[address] = channel
            evicted = []
            while len(self._channels) > self._channels_max:
                evicted.append(self._channels.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return channel

    # -- topology

    def topology(self) -> Topology:
        """The current topology, fetched from the coordinator now."""
        return self._fetch_topology(_Deadline(self.deadline_s, "GetTopology"))

    def _fetch_topology(self, deadline: _Deadline) -> Topology:
        stub = cgrpc.CoordinatorServiceStub(self._channel(self.coordinator))
        try:
            resp = stub.GetTopology(cpb.GetTopologyRequest(), timeout=deadline.remaining())
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"coordinator at {self.coordinator}") from None
        topology = topology_from_pb(resp.topology)
        with self._lock:
            self._topology, self._fetched_at = topology, time.monotonic()
        return topology

    def _current_topology(self, deadline: _Deadline, force: bool) -> Topology:
        with self._lock:
            cached, age = self._topology, time.monotonic() - self._fetched_at
        if cached is not None and not force and age < self._ttl_s:
            return cached
        try:
            return self._fetch_topology(deadline)
        except DomicileError:
            # Nodes keep serving while the coordinator is away; so does the last topology.
            if cached is None:
                raise
            return cached

    def _coordinator_call(self, what: str, rpc: Callable[[Any, float], R]) -> R:
        """A call to the coordinator, retried like node calls (there is only one coordinator)."""
        deadline = _Deadline(self.deadline_s, what)
        retries = 0
        while True:
            stub = cgrpc.CoordinatorServiceStub(self._channel(self.coordinator))
            try:
                return rpc(stub, deadline.remaining())
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, f"coordinator at {self.coordinator}")
            retries += 1
            if not error.retriable or retries >= self.retry.attempts_max:
                raise error
            pause = self.retry.backoff_s(retries, self._rng)
            if pause >= deadline.remaining():
                raise error
            time.sleep(pause)

    # -- the one call path

    def _call(
        self,
        what: str,
        namespace: str | None,
        region: str | None,
        write: bool,
        rpc: Callable[[Any, float], R],
        node_id: str | None = None,
        deadline_s: float | None = None,
    ) -> tuple[R, NodeInfo]:
        deadline = _call_deadline(self.deadline_s, deadline_s, what)
        plan = _Attempt(region=region, write=write, node_id=node_id)
        while True:
            node: NodeInfo | None = None
            try:
                topology = self._current_topology(deadline, plan.refresh)
                plan.refresh = False
                node = route(
                    topology,
                    namespace,
                    region=plan.region,
                    preferred_region=self.region,
                    allowed_regions=plan.allowed_regions,
                    avoid=plan.avoid,
                    node_id=plan.node_id,
                )
                stub = sgrpc.StorageNodeServiceStub(self._channel(node.address))
                try:
                    return rpc(stub, deadline.remaining()), node
                except grpc.RpcError as exc:
                    raise error_from_rpc(exc, node.describe()) from None
            except DomicileError as error:
                if not plan.next_step(error, node, self.retry):
                    raise
                pause = plan.backoff_s(error, self.retry, self._rng)
                if pause >= deadline.remaining():
                    raise
                time.sleep(pause)

    # -- API

    def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        context: CausalContext | None = None,
        subject_id: str = "",
        subject_jurisdiction: str = "",
        classification: Classification | str | None = None,
        content_type: str = "",
        region: str | None = None,
    ) -> PutResult:
        req = put_request(
            namespace, key, value, context, subject_id, subject_jurisdiction, classification, content_type
        )
        resp, node = self._call(
            f"put {namespace}/{key}", namespace, region, True, lambda s, t: s.Put(req, timeout=t)
        )
        return put_result_from_pb(resp, node.region)

    def get(self, namespace: str, key: str, *, region: str | None = None) -> GetResult:
        check_name(namespace, key)
        req = spb.GetRequest(namespace=namespace, key=key)
        resp, node = self._call(
            f"get {namespace}/{key}", namespace, region, False, lambda s, t: s.Get(req, timeout=t)
        )
        return get_result_from_pb(resp, node.region, node.describe())

    def delete(
        self,
        namespace: str,
        key: str,
        *,
        context: CausalContext | None = None,
        region: str | None = None,
        subject_id: str | None = None,
        subject_jurisdiction: str | None = None,
    ) -> DeleteResult:
        """Writes a tombstone. subject_id / subject_jurisdiction are used only when the node holds
        no version of the record (it then cannot tell where the tombstone belongs)."""
        req = delete_request(namespace, key, context, subject_id, subject_jurisdiction)
        resp, node = self._call(
            f"delete {namespace}/{key}", namespace, region, True, lambda s, t: s.Delete(req, timeout=t)
        )
        return delete_result_from_pb(resp, node.region)

    def scan(
        self, namespace: str, prefix: str = "", *, region: str | None = None, page_size: int = 100
    ) -> Iterator[ScanItem]:
        """Every live record whose key starts with prefix, in key order, fetched page by page
        (each page is one call with its own deadline). Later pages go to the region that
        answered the first one, because page tokens are only meaningful there."""
        check_name(namespace)
        check_page_size(page_size)
        return self._scan(namespace, prefix, region, page_size)

    def _scan(self, namespace: str, prefix: str, region: str | None, page_size: int) -> Iterator[ScanItem]:
        token = ""
        while True:
            req = spb.ScanRequest(
                namespace=namespace, key_prefix=prefix, page_size=page_size, page_token=token
            )
            resp, node = self._call(f"scan {namespace}", namespace, region, False, _scan_rpc(req))
            yield from scan_items_from_pb(resp, node.describe())
            token, region = resp.next_page_token, node.region
            if not token:
                return

    def node_status(self, region: str | None = None, *, node_id: str | None = None) -> NodeStatus:
        """Status of the node serving `region`, or of the node `node_id`."""
        if region is None and node_id is None:
            raise InvalidArgument("node_status needs a region or a node_id")
        resp, _ = self._call(
            f"status of {node_id or region}",
            None,
            region,
            False,
            lambda s, t: s.GetNodeStatus(spb.GetNodeStatusRequest(), timeout=t),
            node_id=node_id,
        )
        return node_status_from_pb(resp)

    # -- audit and compliance

    def read_audit_log(
        self,
        region: str,
        *,
        after_seq: int = 0,
        limit: int = 0,
        tail: bool = False,
        page_entries: int = AUDIT_PAGE_ENTRIES,
    ) -> tuple[SignedHead | None, Iterator[StoredEntry]]:
        """The audit log of `region` from after_seq (limit 0: to its end), or with tail=True its
        last `limit` entries, and the node's signed head taken before the read.

        The first page is read now (so the head is known); the rest as the iterator is consumed,
        one call of page_entries entries each, all from the node that answered the first page.
        Every read is itself recorded in the log.
        """
        cursor = _AuditCursor(region, after_seq, limit, tail, page_entries)
        head, entries, node = self._audit_page(cursor, None)
        return head, self._audit_rest(cursor, entries, node)

    def _audit_page(
        self, cursor: _AuditCursor, node_id: str | None
    ) -> tuple[SignedHead | None, list[StoredEntry], NodeInfo]:
        region = None if node_id else cursor.region
        msgs, node = self._call(cursor.what(), None, region, False, _audit_rpc(cursor.request()), node_id)
        head, entries = audit_page_from_pb(msgs)
        return head, cursor.advance(head, entries), node

    def _audit_rest(
        self, cursor: _AuditCursor, first: list[StoredEntry], node: NodeInfo
    ) -> Iterator[StoredEntry]:
        yield from first
        while not cursor.done:
            _, entries, node = self._audit_page(cursor, node.node_id)
            yield from entries

    def audit_head(self, region: str) -> tuple[SignedHead | None, int]:
        """The last signed head of `region`'s audit log that the coordinator accepted, and when
        it accepted it (ms since the epoch); (None, 0) when the region has exported none yet."""
        check_region_name(region)
        what = f"audit head of {region}"
        _check_known_region(self._current_topology(_Deadline(self.deadline_s, what), False), region)
        req = cpb.GetAuditHeadRequest(region=region)
        try:
            resp = self._coordinator_call(what, lambda s, t: s.GetAuditHead(req, timeout=t))
        except NotFound:
            return None, 0
        if not resp.HasField("head"):
            return None, 0
        return head_from_pb(resp.head), resp.accepted_unix_ms

    def scan_compliance(
        self,
        region: str,
        violations_max: int = VIOLATIONS_MAX_DEFAULT,
        *,
        deadline_s: float | None = None,
    ) -> ComplianceReport:
        """Has the node of `region` check every record copy it holds against the policy in
        force. The scan walks the whole store: pass a deadline_s that fits its size."""
        check_region_name(region)
        check_violations_max(violations_max)
        req = spb.ScanComplianceRequest(violations_max=violations_max)
        resp, node = self._call(
            f"compliance scan of {region}",
            None,
            region,
            False,
            lambda s, t: s.ScanCompliance(req, timeout=t),
            deadline_s=deadline_s,
        )
        return compliance_report_from_pb(resp, node.node_id, node.region)

    # -- data-subject requests and legal holds (coordinator)

    def erase_subject(
        self, subject_id: str, reason: str, subject_jurisdiction: str | None = None
    ) -> SubjectRequest:
        """Opens an erasure request: every region erases the subject's records, except those a
        legal hold or a legal retention obligation keeps (each region's receipt says which).
        The jurisdiction decides the due time (US-CA 45 days, else one month). AlreadyExists
        when an erasure of the subject is open; its message names that request. The call is
        retried on transient errors, so a first attempt whose answer was lost shows up as that
        AlreadyExists too."""
        req = erase_request(subject_id, reason, subject_jurisdiction)
        what = f"erase subject {subject_id}"
        return request_of(self._coordinator_call(what, lambda s, t: s.EraseSubject(req, timeout=t)), what)

    def subject_request(self, request_id: str) -> SubjectRequest:
        """One request, with its pending regions and every region's erasure receipt."""
        req = cpb.GetSubjectRequestRequest(request_id=id_arg(request_id, "request id"))
        what = f"subject request {request_id}"
        return request_of(
            self._coordinator_call(what, lambda s, t: s.GetSubjectRequest(req, timeout=t)), what
        )

    def subject_requests(
        self, open_only: bool = False, limit: int = SUBJECT_REQUESTS_LIMIT_DEFAULT
    ) -> list[SubjectRequest]:
        """Requests, newest first: at most `limit` (1 to 1000), only open ones with open_only."""
        req = list_requests_request(open_only, limit)
        resp = self._coordinator_call(
            "list subject requests", lambda s, t: s.ListSubjectRequests(req, timeout=t)
        )
        return [request_from_pb(r) for r in resp.requests]

    def open_access_request(
        self, subject_id: str, reason: str = "", subject_jurisdiction: str | None = None
    ) -> SubjectRequest:
        """Records an access request (GDPR Art. 15 and 20); read the records with
        export_subject_region and report with complete_access_request."""
        req = access_request(subject_id, reason, subject_jurisdiction)
        what = f"open access request of subject {subject_id}"
        return request_of(
            self._coordinator_call(what, lambda s, t: s.OpenSubjectRequest(req, timeout=t)), what
        )

    def complete_access_request(self, request_id: str, records_exported: int) -> SubjectRequest:
        req = complete_request(request_id, records_exported)
        what = f"complete access request {request_id}"
        return request_of(
            self._coordinator_call(what, lambda s, t: s.CompleteSubjectRequest(req, timeout=t)), what
        )

    def place_hold(
        self,
        scope: HoldScope | str,
        *,
        subject_id: str = "",
        namespace: str = "",
        key: str = "",
        reason: str,
    ) -> LegalHold:
        """Places a legal hold: what it covers is neither expired nor erased until it is
        released. Scope subject needs subject_id; namespace needs namespace; key needs both
        namespace and key."""
        req = place_hold_request(scope, subject_id, namespace, key, reason)
        what = "place legal hold"
        return hold_of(self._coordinator_call(what, lambda s, t: s.PlaceLegalHold(req, timeout=t)), what)

    def release_hold(self, hold_id: str, reason: str) -> LegalHold:
        """Releases a hold; returns it as it was. NotFound for an unknown (or released) id."""
        req = release_hold_request(hold_id, reason)
        what = f"release legal hold {hold_id}"
        return hold_of(self._coordinator_call(what, lambda s, t: s.ReleaseLegalHold(req, timeout=t)), what)

    def holds(self) -> list[LegalHold]:
        """Legal holds in force."""
        resp = self._coordinator_call(
            "list legal holds", lambda s, t: s.ListLegalHolds(cpb.ListLegalHoldsRequest(), timeout=t)
        )
        return [hold_from_pb(h) for h in resp.holds]

    def export_subject_region(
        self, region: str, subject_id: str, request_id: str = "", *, deadline_s: float | None = None
    ) -> Iterator[ExportedCopy]:
        """Every live record of the subject that `region` holds and may serve, streamed from
        that region's node as it reads them (the node audits the export under request_id).

        The export is one stream: deadline_s (default: the client's) bounds all of it. Opening
        it is retried like any call; a stream that breaks after records arrived is not (it
        cannot resume where it broke): its error is raised from the iterator. Stopping early
        cancels the stream."""
        req = export_request(region, subject_id, request_id)
        (call, first), node = self._call(
            f"export of subject {subject_id} from {region}",
            None,
            region,
            False,
            _export_open(req),
            deadline_s=deadline_s,
        )
        return self._export_rest(call, first, node)

    def _export_rest(
        self, call: Any, first: spb.ExportSubjectResponse | None, node: NodeInfo
    ) -> Iterator[ExportedCopy]:
        try:
            msg = first
            while msg is not None:
                yield from exported_copies_from_pb(msg, node.node_id, node.region, node.describe())
                msg = next(call, None)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, node.describe()) from None
        finally:
            call.cancel()


# ---------------------------------------------------------------------------------------------
# Asyncio client


class AsyncClient:
    """The asyncio twin of Client. Create and use it on one event loop."""

    def __init__(
        self,
        coordinator: str = DEFAULT_COORDINATOR,
        *,
        region: str | None = None,
        deadline_s: float = 5.0,
        retry: RetryPolicy | None = None,
        topology_ttl_s: float = 5.0,
        channels_max: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.region = region
        self.deadline_s = deadline_s
        self.retry = _options(deadline_s, retry, topology_ttl_s)
        self._ttl_s = topology_ttl_s
        self._channels_max = max(1, channels_max)
        self._rng = rng or random.Random()
        self._channels: OrderedDict[str, Any] = OrderedDict()
        self._topology: Topology | None = None
        self._fetched_at = 0.0
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = list(self._channels.values()), OrderedDict()
        for channel in channels:
            await channel.close()

    async def _channel(self, address: str) -> Any:
        if self._closed:
            raise FailedPrecondition("the client is closed")
        channel = self._channels.get(address)
        if channel is not None:
            self._channels.move_to_end(address)
            return channel
        channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._channels[address] = channel
        while len(self._channels) > self._channels_max:
            await self._channels.popitem(last=False)[1].close()
        return channel

    async def topology(self) -> Topology:
        """The current topology, fetched from the coordinator now."""
        return await self._fetch_topology(_Deadline(self.deadline_s, "GetTopology"))

    async def _fetch_topology(self, deadline: _Deadline) -> Topology:
        stub = cgrpc.CoordinatorServiceStub(await self._channel(self.coordinator))
        try:
            resp = await stub.GetTopology(cpb.GetTopologyRequest(), timeout=deadline.remaining())
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"coordinator at {self.coordinator}") from None
        self._topology, self._fetched_at = topology_from_pb(resp.topology), time.monotonic()
        return self._topology

    async def _coordinator_call(self, what: str, rpc: Callable[[Any, float], Awaitable[R]]) -> R:
        deadline = _Deadline(self.deadline_s, what)
        retries = 0
        while True:
            stub = cgrpc.CoordinatorServiceStub(await self._channel(self.coordinator))
            try:
                return await rpc(stub, deadline.remaining())
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, f"coordinator at {self.coordinator}")
            retries += 1
            if not error.retriable or retries >= self.retry.attempts_max:
                raise error
            pause = self.retry.backoff_s(retries, self._rng)
            if pause >= deadline.remaining():
                raise error
            await asyncio.sleep(pause)

    async def _current_topology(self, deadline: _Deadline, force: bool) -> Topology:
        cached = self._topology
        if cached is not None and not force and time.monotonic() - self._fetched_at < self._ttl_s:
            return cached
        try:
            return await self._fetch_topology(deadline)
        except DomicileError:
            if cached is None:
                raise
            return cached

    async def _call(
        self,
        what: str,
        namespace: str | None,
        region: str | None,
        write: bool,
        rpc: Callable[[Any, float], Awaitable[R]],
        node_id: str | None = None,
        deadline_s: float | None = None,
    ) -> tuple[R, NodeInfo]:
        deadline = _call_deadline(self.deadline_s, deadline_s, what)
        plan = _Attempt(region=region, write=write, node_id=node_id)
        while True:
            node: NodeInfo | None = None
            try:
                topology = await self._current_topology(deadline, plan.refresh)
                plan.refresh = False
                node = route(
                    topology,
                    namespace,
                    region=plan.region,
                    preferred_region=self.region,
                    allowed_regions=plan.allowed_regions,
                    avoid=plan.avoid,
                    node_id=plan.node_id,
                )
                stub = sgrpc.StorageNodeServiceStub(await self._channel(node.address))
                try:
                    return await rpc(stub, deadline.remaining()), node
                except grpc.RpcError as exc:
                    raise error_from_rpc(exc, node.describe()) from None
            except DomicileError as error:
                if not plan.next_step(error, node, self.retry):
                    raise
                pause = plan.backoff_s(error, self.retry, self._rng)
                if pause >= deadline.remaining():
                    raise
                await asyncio.sleep(pause)

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        context: CausalContext | None = None,
        subject_id: str = "",
        subject_jurisdiction: str = "",
        classification: Classification | str | None = None,
        content_type: str = "",
        region: str | None = None,
    ) -> PutResult:
        req = put_request(
            namespace, key, value, context, subject_id, subject_jurisdiction, classification, content_type
        )
        resp, node = await self._call(
            f"put {namespace}/{key}", namespace, region, True, lambda s, t: s.Put(req, timeout=t)
        )
        return put_result_from_pb(resp, node.region)

    async def get(self, namespace: str, key: str, *, region: str | None = None) -> GetResult:
        check_name(namespace, key)
        req = spb.GetRequest(namespace=namespace, key=key)
        resp, node = await self._call(
            f"get {namespace}/{key}", namespace, region, False, lambda s, t: s.Get(req, timeout=t)
        )
        return get_result_from_pb(resp, node.region, node.describe())

    async def delete(
        self,
        namespace: str,
        key: str,
        *,
        context: CausalContext | None = None,
        region: str | None = None,
        subject_id: str | None = None,
        subject_jurisdiction: str | None = None,
    ) -> DeleteResult:
        req = delete_request(namespace, key, context, subject_id, subject_jurisdiction)
        resp, node = await self._call(
            f"delete {namespace}/{key}", namespace, region, True, lambda s, t: s.Delete(req, timeout=t)
        )
        return delete_result_from_pb(resp, node.region)

    def scan(
        self, namespace: str, prefix: str = "", *, region: str | None = None, page_size: int = 100
    ) -> AsyncIterator[ScanItem]:
        """As Client.scan: `async for item in client.scan(...)`."""
        check_name(namespace)
        check_page_size(page_size)
        return self._scan(namespace, prefix, region, page_size)

    async def _scan(
        self, namespace: str, prefix: str, region: str | None, page_size: int
    ) -> AsyncIterator[ScanItem]:
        token = ""
        while True:
            req = spb.ScanRequest(
                namespace=namespace, key_prefix=prefix, page_size=page_size, page_token=token
            )
            resp, node = await self._call(f"scan {namespace}", namespace, region, False, _scan_rpc(req))
            for item in scan_items_from_pb(resp, node.describe()):
                yield item
            token, region = resp.next_page_token, node.region
            if not token:
                return

    async def node_status(self, region: str | None = None, *, node_id: str | None = None) -> NodeStatus:
        """Status of the node serving `region`, or of the node `node_id`."""
        if region is None and node_id is None:
            raise InvalidArgument("node_status needs a region or a node_id")
        resp, _ = await self._call(
            f"status of {node_id or region}",
            None,
            region,
            False,
            lambda s, t: s.GetNodeStatus(spb.GetNodeStatusRequest(), timeout=t),
            node_id=node_id,
        )
        return node_status_from_pb(resp)

    # -- audit and compliance

    async def read_audit_log(
        self,
        region: str,
        *,
        after_seq: int = 0,
        limit: int = 0,
        tail: bool = False,
        page_entries: int = AUDIT_PAGE_ENTRIES,
    ) -> tuple[SignedHead | None, AsyncIterator[StoredEntry]]:
        """As Client.read_audit_log: `async for entry in entries`."""
        cursor = _AuditCursor(region, after_seq, limit, tail, page_entries)
        head, entries, node = await self._audit_page(cursor, None)
        return head, self._audit_rest(cursor, entries, node)

    async def _audit_page(
        self, cursor: _AuditCursor, node_id: str | None
    ) -> tuple[SignedHead | None, list[StoredEntry], NodeInfo]:
        region = None if node_id else cursor.region
        rpc = _audit_rpc_async(cursor.request())
        msgs, node = await self._call(cursor.what(), None, region, False, rpc, node_id)
        head, entries = audit_page_from_pb(msgs)
        return head, cursor.advance(head, entries), node

    async def _audit_rest(
        self, cursor: _AuditCursor, first: list[StoredEntry], node: NodeInfo
    ) -> AsyncIterator[StoredEntry]:
        for entry in first:
            yield entry
        while not cursor.done:
            _, entries, node = await self._audit_page(cursor, node.node_id)
            for entry in entries:
                yield entry

    async def audit_head(self, region: str) -> tuple[SignedHead | None, int]:
        """As Client.audit_head."""
        check_region_name(region)
        what = f"audit head of {region}"
        topology = await self._current_topology(_Deadline(self.deadline_s, what), False)
        _check_known_region(topology, region)
        req = cpb.GetAuditHeadRequest(region=region)
        try:
            resp = await self._coordinator_call(what, lambda s, t: s.GetAuditHead(req, timeout=t))
        except NotFound:
            return None, 0
        if not resp.HasField("head"):
            return None, 0
        return head_from_pb(resp.head), resp.accepted_unix_ms

    async def scan_compliance(
        self,
        region: str,
        violations_max: int = VIOLATIONS_MAX_DEFAULT,
        *,
        deadline_s: float | None = None,
    ) -> ComplianceReport:
        """As Client.scan_compliance."""
        check_region_name(region)
        check_violations_max(violations_max)
        req = spb.ScanComplianceRequest(violations_max=violations_max)
        resp, node = await self._call(
            f"compliance scan of {region}",
            None,
            region,
            False,
            lambda s, t: s.ScanCompliance(req, timeout=t),
            deadline_s=deadline_s,
        )
        return compliance_report_from_pb(resp, node.node_id, node.region)

    # -- data-subject requests and legal holds (coordinator)

    async def erase_subject(
        self, subject_id: str, reason: str, subject_jurisdiction: str | None = None
    ) -> SubjectRequest:
        """As Client.erase_subject."""
        req = erase_request(subject_id, reason, subject_jurisdiction)
        what = f"erase subject {subject_id}"
        resp = await self._coordinator_call(what, lambda s, t: s.EraseSubject(req, timeout=t))
        return request_of(resp, what)

    async def subject_request(self, request_id: str) -> SubjectRequest:
        """As Client.subject_request."""
        req = cpb.GetSubjectRequestRequest(request_id=id_arg(request_id, "request id"))
        what = f"subject request {request_id}"
        resp = await self._coordinator_call(what, lambda s, t: s.GetSubjectRequest(req, timeout=t))
        return request_of(resp, what)

    async def subject_requests(
        self, open_only: bool = False, limit: int = SUBJECT_REQUESTS_LIMIT_DEFAULT
    ) -> list[SubjectRequest]:
        """As Client.subject_requests."""
        req = list_requests_request(open_only, limit)
        resp = await self._coordinator_call(
            "list subject requests", lambda s, t: s.ListSubjectRequests(req, timeout=t)
        )
        return [request_from_pb(r) for r in resp.requests]

    async def open_access_request(
        self, subject_id: str, reason: str = "", subject_jurisdiction: str | None = None
    ) -> SubjectRequest:
        """As Client.open_access_request."""
        req = access_request(subject_id, reason, subject_jurisdiction)
        what = f"open access request of subject {subject_id}"
        resp = await self._coordinator_call(what, lambda s, t: s.OpenSubjectRequest(req, timeout=t))
        return request_of(resp, what)

    async def complete_access_request(self, request_id: str, records_exported: int) -> SubjectRequest:
        """As Client.complete_access_request."""
        req = complete_request(request_id, records_exported)
        what = f"complete access request {request_id}"
        resp = await self._coordinator_call(what, lambda s, t: s.CompleteSubjectRequest(req, timeout=t))
        return request_of(resp, what)

    async def place_hold(
        self,
        scope: HoldScope | str,
        *,
        subject_id: str = "",
        namespace: str = "",
        key: str = "",
        reason: str,
    ) -> LegalHold:
        """As Client.place_hold."""
        req = place_hold_request(scope, subject_id, namespace, key, reason)
        what = "place legal hold"
        return hold_of(
            await self._coordinator_call(what, lambda s, t: s.PlaceLegalHold(req, timeout=t)), what
        )

    async def release_hold(self, hold_id: str, reason: str) -> LegalHold:
        """As Client.release_hold."""
        req = release_hold_request(hold_id, reason)
        what = f"release legal hold {hold_id}"
        return hold_of(
            await self._coordinator_call(what, lambda s, t: s.ReleaseLegalHold(req, timeout=t)), what
        )

    async def holds(self) -> list[LegalHold]:
        """As Client.holds."""
        resp = await self._coordinator_call(
            "list legal holds", lambda s, t: s.ListLegalHolds(cpb.ListLegalHoldsRequest(), timeout=t)
        )
        return [hold_from_pb(h) for h in resp.holds]

    async def export_subject_region(
        self, region: str, subject_id: str, request_id: str = "", *, deadline_s: float | None = None
    ) -> AsyncIterator[ExportedCopy]:
        """As Client.export_subject_region: `async for copy in await client.export_subject_region(...)`."""
        req = export_request(region, subject_id, request_id)
        (call, first), node = await self._call(
            f"export of subject {subject_id} from {region}",
            None,
            region,
            False,
            _export_open_async(req),
            deadline_s=deadline_s,
        )
        return self._export_rest(call, first, node)

    async def _export_rest(
        self, call: Any, first: spb.ExportSubjectResponse | None, node: NodeInfo
    ) -> AsyncIterator[ExportedCopy]:
        try:
            msg = first
            while msg is not None:
                for copy in exported_copies_from_pb(msg, node.node_id, node.region, node.describe()):
                    yield copy
                nxt = await call.read()
                msg = None if nxt is grpc.aio.EOF else nxt
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, node.describe()) from None
        finally:
            call.cancel()
