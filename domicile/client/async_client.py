"""The asyncio client, AsyncClient: the one implementation of the SDK's calls.

The blocking Client in sync_client.py is generated from this module by
scripts/gen_sync_client.py (`make sync-client`): write every change here, in a form that stays
right once `async` and `await` are removed, and put what must differ in async_runtime.py.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import grpc

from domicile.audit import HeadOnRecord, SignedHead, StoredEntry
from domicile.causality import CausalContext
from domicile.client import async_runtime as runtime
from domicile.client.audit_pages import AuditCursor
from domicile.client.metadata import WithMetadata, call_metadata
from domicile.client.retries import Attempt, Deadline, RetryPolicy, call_deadline, check_client_options
from domicile.client.routing import check_known_region, route
from domicile.errors import DomicileError, FailedPrecondition, InvalidArgument, NotFound
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.identity.tls_files import TlsFiles
from domicile.identity.transport import client_dialer
from domicile.model import Classification, check_node_id
from domicile.results import (
    BatchRecord,
    ComplianceReport,
    DeleteResult,
    ExportedCopy,
    GetResult,
    NodeStatus,
    PairConsistency,
    PutResult,
    RemediationReceipt,
    ScanItem,
)
from domicile.subjects import HoldScope, LegalHold, SubjectRequest
from domicile.topology import NodeInfo, Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cgrpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as sgrpc
from domicile.wire.audit import audit_page_from_pb, closed_chain_from_pb, head_from_pb
from domicile.wire.batch import put_batch_results_from_pb
from domicile.wire.consistency import pair_consistency_from_pb
from domicile.wire.errors import error_from_rpc
from domicile.wire.limits import (
    AUDIT_PAGE_ENTRIES,
    PUT_BATCH_RECORDS_MAX,
    STORAGE_REQUEST_BYTES_MAX,
    SUBJECT_REQUESTS_LIMIT_DEFAULT,
    VIOLATIONS_MAX_DEFAULT,
)
from domicile.wire.records import (
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
from domicile.wire.status import compliance_report_from_pb, node_status_from_pb, receipt_from_pb
from domicile.wire.subjects import exported_copies_from_pb, hold_from_pb, hold_of, request_from_pb, request_of
from domicile.wire.topology import topology_from_pb

DEFAULT_COORDINATOR = "127.0.0.1:7400"

R = TypeVar("R")
_COORDINATOR = ExpectedPeer.coordinator()
# With a topology in hand, a refresh of it takes at most this share of a call's remaining
# time, and never more than this many seconds.
TOPOLOGY_REFRESH_SHARE = 0.25
TOPOLOGY_REFRESH_MAX_S = 1.0


def _node_peer(node: NodeInfo) -> ExpectedPeer:
    # The handshake insists on the node the topology names: records go to no one else.
    return ExpectedPeer.node(node.region, node.node_id)


def _audit_rpc(req: spb.ReadAuditLogRequest) -> runtime.Rpc[list[spb.ReadAuditLogResponse]]:
    # A page is read to its end inside the call, so that a broken stream is retried like any call.
    async def rpc(stub: Any, seconds: float) -> list[spb.ReadAuditLogResponse]:
        return [msg async for msg in stub.ReadAuditLog(req, timeout=seconds)]

    return rpc


def _scan_rpc(req: spb.ScanRequest) -> runtime.Rpc[spb.ScanResponse]:
    async def rpc(stub: Any, seconds: float) -> spb.ScanResponse:
        response: spb.ScanResponse = await stub.Scan(req, timeout=seconds)
        return response

    return rpc


def _export_open(req: spb.ExportSubjectRequest) -> runtime.Rpc[tuple[Any, spb.ExportSubjectResponse | None]]:
    # The first message is read inside the call, so that a node that cannot be reached or
    # refuses is retried (or routed around) like any call; once records arrive it cannot be.
    async def rpc(stub: Any, seconds: float) -> tuple[Any, spb.ExportSubjectResponse | None]:
        call = stub.ExportSubject(req, timeout=seconds)
        return call, await runtime.next_message(call)

    return rpc


class AsyncClient:
    """The asyncio client. Create and use it on one event loop."""

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
        tls: TlsFiles | None = None,
        insecure: bool = False,
        dialer: Dialer | None = None,
        token: str | None = None,
        purpose: str = "",
    ) -> None:
        """Mutual TLS with `tls` (the CA, this client's certificate and key) or a ready `dialer`;
        plaintext only with `insecure=True` (development clusters). `token`: a JWT sent as
        `authorization: Bearer` with every call, for callers without a client certificate.
        `purpose`: the processing purpose declared with every call (`domicile-purpose`)."""
        if dialer is not None and (tls is not None or insecure):
            raise InvalidArgument("pass either dialer or tls / insecure, not both")
        self._dialer = dialer or client_dialer(tls, insecure)
        if token is not None and self._dialer.cluster is None:
            raise InvalidArgument("a bearer token is never sent in plaintext: use tls, not insecure")
        self._metadata = call_metadata(token, purpose)
        self.coordinator = coordinator
        self.region = region
        self.deadline_s = deadline_s
        self.retry = check_client_options(deadline_s, retry, topology_ttl_s)
        self._ttl_s = topology_ttl_s
        self._channels_max = max(1, channels_max)
        self._rng = rng or random.Random()
        # Turns among the daemons of one region (routing.route), from a random first turn so that
        # short-lived clients (a command run once) spread too.
        self._spread = itertools.count(self._rng.randrange(1 << 16))
        self._lock = runtime.Lock()
        self._channels: OrderedDict[str, Any] = OrderedDict()
        self._topology: Topology | None = None
        self._fetched_at = 0.0
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), OrderedDict()
        for channel in channels:
            await runtime.close_channel(channel)

    async def _channel(self, address: str, expected: ExpectedPeer) -> Any:
        with self._lock:
            if self._closed:
                raise FailedPrecondition("the client is closed")
            channel = self._channels.get(address)
            if channel is not None:
                self._channels.move_to_end(address)
                return channel
            channel = runtime.open_channel(self._dialer, address, expected)
            self._channels[address] = channel
            evicted = []
            while len(self._channels) > self._channels_max:
                evicted.append(self._channels.popitem(last=False)[1])
        for old in evicted:
            await runtime.close_channel(old)
        return channel

    def _stub(self, stub: Any, channel: Any) -> Any:
        return WithMetadata(stub(channel), self._metadata)

    # -- topology

    async def topology(self) -> Topology:
        """The current topology, fetched from the coordinator now."""
        return await self._fetch_topology(Deadline(self.deadline_s, "GetTopology"))

    async def _fetch_topology(self, deadline: Deadline, timeout_s: float | None = None) -> Topology:
        stub = self._stub(cgrpc.CoordinatorServiceStub, await self._channel(self.coordinator, _COORDINATOR))
        try:
            resp = await stub.GetTopology(
                cpb.GetTopologyRequest(), timeout=deadline.remaining() if timeout_s is None else timeout_s
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"coordinator at {self.coordinator}") from None
        topology = topology_from_pb(resp.topology)
        with self._lock:
            self._topology, self._fetched_at = topology, time.monotonic()
        return topology

    async def _current_topology(self, deadline: Deadline, force: bool) -> Topology:
        with self._lock:
            cached, age = self._topology, time.monotonic() - self._fetched_at
        if cached is not None and not force and age < self._ttl_s:
            return cached
        # With a topology in hand, a refresh gets only a share of the call's time: a coordinator
        # that does not answer must not use up the deadline the node call needs.
        timeout_s = None if cached is None else deadline.share(TOPOLOGY_REFRESH_SHARE, TOPOLOGY_REFRESH_MAX_S)
        try:
            return await self._fetch_topology(deadline, timeout_s)
        except DomicileError:
            # Nodes keep serving while the coordinator is away; so does the last topology.
            if cached is None:
                raise
            with self._lock:
                # Tried now: the next calls use it for a TTL before asking again.
                self._fetched_at = time.monotonic()
            return cached

    async def _coordinator_call(
        self, what: str, rpc: runtime.Rpc[R], *, deadline: Deadline | None = None, replay_safe: bool = True
    ) -> R:
        """A call to the coordinator, retried like node calls (there is only one coordinator).
        `replay_safe` False: a call that makes something anew each time (a hold, a request) is
        not retried, since an attempt whose answer was lost may have made it; the error then
        says the outcome is unknown."""
        deadline = deadline or Deadline(self.deadline_s, what)
        retries = 0
        while True:
            stub = self._stub(
                cgrpc.CoordinatorServiceStub, await self._channel(self.coordinator, _COORDINATOR)
            )
            try:
                return await rpc(stub, deadline.remaining())
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, f"coordinator at {self.coordinator}")
            retries += 1
            if error.retriable and not replay_safe:
                raise type(error)(
                    f"{error.message}; the outcome is unknown (the coordinator may have carried it "
                    "out): check before calling again"
                ) from None
            if not error.retriable or retries >= self.retry.attempts_max:
                raise error
            pause = self.retry.backoff_s(retries, self._rng)
            if pause >= deadline.remaining():
                raise error
            await runtime.sleep(pause)

    # -- the one call path

    async def _call(
        self,
        what: str,
        namespace: str | None,
        region: str | None,
        write: bool,
        rpc: runtime.Rpc[R],
        node_id: str | None = None,
        deadline_s: float | None = None,
    ) -> tuple[R, NodeInfo]:
        deadline = call_deadline(self.deadline_s, deadline_s, what)
        plan = Attempt(region=region, write=write, node_id=node_id)
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
                    spread=next(self._spread),
                )
                stub = self._stub(
                    sgrpc.StorageNodeServiceStub, await self._channel(node.address, _node_peer(node))
                )
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
                await runtime.sleep(pause)

    # -- API

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
        context_token: bytes | None = None,
        request_id: str | None = None,
    ) -> PutResult:
        """`context_token` (from an earlier result of this key, unchanged) names the versions this
        write supersedes. `context` (a plain CausalContext) is refused with InvalidArgument: nodes
        no longer accept a context that is not authenticated. `request_id` names this logical
        write (by default a new random id): every retry of this call sends it, and so may a
        caller that retries the call itself, so that the cluster writes it once."""
        req = put_request(
            namespace,
            key,
            value,
            context,
            subject_id,
            subject_jurisdiction,
            classification,
            content_type,
            context_token,
            request_id,
        )
        resp, node = await self._call(
            f"put {namespace}/{key}", namespace, region, True, lambda s, t: s.Put(req, timeout=t)
        )
        return put_result_from_pb(resp, node.region)

    async def put_batch(
        self, namespace: str, records: list[BatchRecord], *, region: str | None = None
    ) -> list[PutResult | DomicileError]:
        """Writes up to PUT_BATCH_RECORDS_MAX (1,000) records of one namespace in one call: each
        is checked, decided and audited as a put of its own, and the accepted ones are committed
        together. Returns one result per record, in order: its PutResult, or the error a put of
        it alone would have raised (a refused record does not fail the others). Raises only
        when the batch as a whole fails (nothing is then known to be written; a retry with the
        same records writes each of them once, by their request ids)."""
        if not 1 <= len(records) <= PUT_BATCH_RECORDS_MAX:
            raise InvalidArgument(
                f"a batch holds {len(records)} records; put_batch takes 1 to {PUT_BATCH_RECORDS_MAX}"
            )
        req = spb.PutBatchRequest(
            puts=[
                put_request(
                    namespace,
                    r.key,
                    r.value,
                    None,
                    r.subject_id,
                    r.subject_jurisdiction,
                    r.classification,
                    r.content_type,
                    r.context_token,
                    r.request_id,
                )
                for r in records
            ]
        )
        size = req.ByteSize()
        if size > STORAGE_REQUEST_BYTES_MAX:
            # Refused here, not by every node the call would be retried on (the node's refusal
            # is RESOURCE_EXHAUSTED, as a full write queue's, which is retried).
            raise InvalidArgument(
                f"a PutBatch of these {len(records)} records is {size} bytes; a storage request may "
                f"be at most {STORAGE_REQUEST_BYTES_MAX} bytes: split the records into smaller batches"
            )
        resp, node = await self._call(
            f"put_batch {namespace} ({len(records)} records)",
            namespace,
            region,
            True,
            lambda s, t: s.PutBatch(req, timeout=t),
        )
        return put_batch_results_from_pb(resp, node.region, len(records), node.describe())

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
        context_token: bytes | None = None,
        request_id: str | None = None,
    ) -> DeleteResult:
        """Writes a tombstone. subject_id / subject_jurisdiction are used only when the node holds
        no version of the record (it then cannot tell where the tombstone belongs). Pass
        `context_token` to delete only the versions it names (a plain `context` is refused, as in
        put). `request_id`: as in put."""
        req = delete_request(
            namespace, key, context, subject_id, subject_jurisdiction, context_token, request_id
        )
        resp, node = await self._call(
            f"delete {namespace}/{key}", namespace, region, True, lambda s, t: s.Delete(req, timeout=t)
        )
        return delete_result_from_pb(resp, node.region)

    def scan(
        self, namespace: str, prefix: str = "", *, region: str | None = None, page_size: int = 100
    ) -> AsyncIterator[ScanItem]:
        """Every live record whose key starts with prefix, in key order, fetched page by page
        (each page is one call with its own deadline). Later pages go to the region that
        answered the first one, because page tokens are only meaningful there."""
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

    async def node_status(
        self,
        region: str | None = None,
        *,
        node_id: str | None = None,
        namespace_stats: bool = False,
        candidate_schemas: Mapping[str, str] | None = None,
    ) -> NodeStatus:
        """Status of the node serving `region`, or of the node `node_id`. With namespace_stats
        (or candidate_schemas: namespace -> JSON Schema text) the node also walks its store to
        count records per namespace and classification (and values failing each candidate)."""
        if region is None and node_id is None:
            raise InvalidArgument("node_status needs a region or a node_id")
        req = spb.GetNodeStatusRequest(
            namespace_stats=namespace_stats, candidate_schemas=dict(candidate_schemas or {})
        )
        resp, _ = await self._call(
            f"status of {node_id or region}",
            None,
            region,
            False,
            lambda s, t: s.GetNodeStatus(req, timeout=t),
            node_id=node_id,
        )
        return node_status_from_pb(resp)

    async def check_consistency(
        self,
        node_id: str,
        peer_node_id: str,
        namespaces: tuple[str, ...] = (),
        *,
        divergent_keys_max: int = 0,
        deadline_s: float | None = None,
        repair: bool = False,
    ) -> PairConsistency:
        """Has node `node_id` compare its replicas with node `peer_node_id`'s digest trees,
        moving no records: per namespace both hold (or of `namespaces`), the keys compared and
        the divergent ones (the first divergent_keys_max of them listed, 0: 100). With `repair`
        (operator role), the node also pulls every key that differs, as an anti-entropy round."""
        req = spb.CheckConsistencyRequest(
            peer_node_id=peer_node_id,
            namespaces=namespaces,
            divergent_keys_max=divergent_keys_max,
            repair=repair,
        )
        resp, _ = await self._call(
            f"consistency check of {node_id} with {peer_node_id}",
            None,
            None,
            False,
            lambda s, t: s.CheckConsistency(req, timeout=t),
            node_id=node_id,
            deadline_s=deadline_s,
        )
        return pair_consistency_from_pb(resp)

    # -- audit and compliance

    async def read_audit_log(
        self,
        region: str,
        *,
        after_seq: int = 0,
        limit: int = 0,
        tail: bool = False,
        page_entries: int = AUDIT_PAGE_ENTRIES,
        node_id: str | None = None,
    ) -> tuple[SignedHead | None, AsyncIterator[StoredEntry]]:
        """The audit log of `region` from after_seq (limit 0: to its end), or with tail=True its
        last `limit` entries, and the node's signed head taken before the read. `node_id`: that
        node's log, in a region with several nodes (each keeps a log of its own).

        The first page is read now (so the head is known); the rest as the iterator is consumed,
        one call of page_entries entries each, all from the node that answered the first page.
        Every read is itself recorded in the log.
        """
        cursor = AuditCursor(region, after_seq, limit, tail, page_entries)
        head, entries, node = await self._audit_page(cursor, node_id)
        return head, self._audit_rest(cursor, entries, node)

    async def _audit_page(
        self, cursor: AuditCursor, node_id: str | None
    ) -> tuple[SignedHead | None, list[StoredEntry], NodeInfo]:
        region = None if node_id else cursor.region
        msgs, node = await self._call(
            cursor.what(), None, region, False, _audit_rpc(cursor.request()), node_id
        )
        head, entries = audit_page_from_pb(msgs)
        return head, cursor.advance(head, entries), node

    async def _audit_rest(
        self, cursor: AuditCursor, first: list[StoredEntry], node: NodeInfo
    ) -> AsyncIterator[StoredEntry]:
        for item in first:
            yield item
        while not cursor.done:
            _, entries, node = await self._audit_page(cursor, node.node_id)
            for item in entries:
                yield item

    async def audit_head(self, region: str, node_id: str = "") -> tuple[SignedHead | None, int]:
        """The last signed head of `region`'s audit log that the coordinator accepted, and when
        it accepted it (ms since the epoch); (None, 0) when the region has exported none yet.
        `node_id`: the node's, in a region with several nodes (each keeps a log of its own)."""
        record = await self.audit_record(region, node_id)
        return (None, 0) if record is None else (record.head, record.accepted_unix_ms)

    async def audit_record(self, region: str, node_id: str = "") -> HeadOnRecord | None:
        """What the coordinator holds of the audit chains of `region`'s node (`node_id` in a
        region with several): the current chain's last accepted head, the incarnation that
        exported it, and the chains the node's earlier incarnations closed (a restore, or a
        store found put back from an older copy, starts a new chain). None when the region has
        exported no head yet."""
        check_region_name(region)
        what = f"audit head of {region}"
        deadline = Deadline(self.deadline_s, what)  # one for the topology and the call
        check_known_region(await self._current_topology(deadline, False), region)
        req = cpb.GetAuditHeadRequest(region=region, node_id=node_id)
        try:
            resp = await self._coordinator_call(
                what, lambda s, t: s.GetAuditHead(req, timeout=t), deadline=deadline
            )
        except NotFound:
            return None
        if not resp.HasField("head"):
            return None
        return HeadOnRecord(
            head_from_pb(resp.head),
            resp.accepted_unix_ms,
            resp.incarnation,
            tuple(closed_chain_from_pb(c) for c in resp.closed_chains),
            resp.closed_chains_omitted,
        )

    async def scan_compliance(
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
        resp, node = await self._call(
            f"compliance scan of {region}",
            None,
            region,
            False,
            lambda s, t: s.ScanCompliance(req, timeout=t),
            deadline_s=deadline_s,
        )
        return compliance_report_from_pb(resp, node.node_id, node.region)

    async def remediate_compliance(
        self,
        region: str,
        request_id: str = "",
        *,
        remove_last_copies: bool = False,
        removed_max: int = VIOLATIONS_MAX_DEFAULT,
        deadline_s: float | None = None,
    ) -> RemediationReceipt:
        """Has the node of `region` remove the record copies the policy in force does not allow
        there, and only there (the dpo role); returns its receipt. Like a scan it walks the whole
        store: pass a deadline_s that fits its size. A second run finds nothing more to remove
        (and records a receipt of nothing)."""
        check_region_name(region)
        check_violations_max(removed_max)
        req = spb.RemediateComplianceRequest(
            request_id=request_id, remove_last_copies=remove_last_copies, removed_max=removed_max
        )
        resp, node = await self._call(
            f"compliance remediation of {region}",
            None,
            region,
            False,
            lambda s, t: s.RemediateCompliance(req, timeout=t),
            deadline_s=deadline_s,
        )
        return receipt_from_pb(resp, node.region)

    # -- data-subject requests and legal holds (coordinator)

    async def remove_node(self, node_id: str) -> int:
        """Decommissions a node that is down (operator role): it leaves the topology and its
        links drop. Returns the topology revision without it. `domicile nodes remove` first
        has the remaining replicas exchange what they hold."""
        check_node_id(node_id)
        req = cpb.RemoveNodeRequest(node_id=node_id)
        answer = await self._coordinator_call(
            f"remove node {node_id}", lambda s, t: s.RemoveNode(req, timeout=t), replay_safe=False
        )
        return int(answer.topology_revision)

    async def erase_subject(
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
        return request_of(
            await self._coordinator_call(what, lambda s, t: s.EraseSubject(req, timeout=t)), what
        )

    async def subject_request(self, request_id: str) -> SubjectRequest:
        """One request, with its pending regions and every region's erasure receipt."""
        req = cpb.GetSubjectRequestRequest(request_id=id_arg(request_id, "request id"))
        what = f"subject request {request_id}"
        return request_of(
            await self._coordinator_call(what, lambda s, t: s.GetSubjectRequest(req, timeout=t)), what
        )

    async def subject_requests(
        self, open_only: bool = False, limit: int = SUBJECT_REQUESTS_LIMIT_DEFAULT
    ) -> list[SubjectRequest]:
        """Requests, newest first: at most `limit` (1 to 1000), only open ones with open_only."""
        req = list_requests_request(open_only, limit)
        resp = await self._coordinator_call(
            "list subject requests", lambda s, t: s.ListSubjectRequests(req, timeout=t)
        )
        return [request_from_pb(r) for r in resp.requests]

    async def open_access_request(
        self, subject_id: str, reason: str = "", subject_jurisdiction: str | None = None
    ) -> SubjectRequest:
        """Records an access request (GDPR Art. 15 and 20); read the records with
        export_subject_region and report with complete_access_request."""
        req = access_request(subject_id, reason, subject_jurisdiction)
        what = f"open access request of subject {subject_id}"
        return request_of(
            await self._coordinator_call(
                what, lambda s, t: s.OpenSubjectRequest(req, timeout=t), replay_safe=False
            ),
            what,
        )

    async def complete_access_request(self, request_id: str, records_exported: int) -> SubjectRequest:
        req = complete_request(request_id, records_exported)
        what = f"complete access request {request_id}"
        return request_of(
            await self._coordinator_call(
                what, lambda s, t: s.CompleteSubjectRequest(req, timeout=t), replay_safe=False
            ),
            what,
        )

    async def place_hold(
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
        return hold_of(
            await self._coordinator_call(
                what, lambda s, t: s.PlaceLegalHold(req, timeout=t), replay_safe=False
            ),
            what,
        )

    async def release_hold(self, hold_id: str, reason: str) -> LegalHold:
        """Releases a hold; returns it as it was. NotFound for an unknown (or released) id."""
        req = release_hold_request(hold_id, reason)
        what = f"release legal hold {hold_id}"
        return hold_of(
            await self._coordinator_call(
                what, lambda s, t: s.ReleaseLegalHold(req, timeout=t), replay_safe=False
            ),
            what,
        )

    async def holds(self) -> list[LegalHold]:
        """Legal holds in force."""
        resp = await self._coordinator_call(
            "list legal holds", lambda s, t: s.ListLegalHolds(cpb.ListLegalHoldsRequest(), timeout=t)
        )
        return [hold_from_pb(h) for h in resp.holds]

    async def export_subject_region(
        self, region: str, subject_id: str, request_id: str = "", *, deadline_s: float | None = None
    ) -> AsyncIterator[ExportedCopy]:
        """Every live record of the subject that `region` holds and may serve, streamed from
        that region's node as it reads them (the node audits the export under request_id).

        The export is one stream: deadline_s (default: the client's) bounds all of it. Opening
        it is retried like any call; a stream that breaks after records arrived is not (it
        cannot resume where it broke): its error is raised from the iterator. Stopping early
        cancels the stream."""
        req = export_request(region, subject_id, request_id)
        (call, first), node = await self._call(
            f"export of subject {subject_id} from {region}",
            None,
            region,
            False,
            _export_open(req),
            deadline_s=deadline_s,
        )
        return self._export_rest(call, first, node)

    async def _export_rest(
        self, call: Any, first: spb.ExportSubjectResponse | None, node: NodeInfo
    ) -> AsyncIterator[ExportedCopy]:
        try:
            msg = first
            while msg is not None:
                for item in exported_copies_from_pb(msg, node.node_id, node.region, node.describe()):
                    yield item
                msg = await runtime.next_message(call)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, node.describe()) from None
        finally:
            call.cancel()
