"""CoordinatorService: validate, delegate to the registry, the audit head book or the subject
desk, map errors. Nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from coordinator.api.errors import status_for
from coordinator.audit_heads import AcceptedHead, AuditHeadBook, KeyBinding
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import Registry
from coordinator.subject_desk import SubjectDesk, check_open_kind
from coordinator.watch import WatchHub
from domicile.audit import ClosedChain
from domicile.authz import ClusterResource
from domicile.authz.gate import Caller, Gate, refuse_wrong_peer
from domicile.authz.model import DEFAULT_CLUSTER_NAME
from domicile.errors import DomicileError, FailedPrecondition, InvalidArgument
from domicile.identity.principal import ExpectedPeer, PrincipalKind
from domicile.subjects import HoldScope, LegalHold, SubjectOrders, SubjectRequest
from domicile.topology import Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.wire.audit import closed_chain_to_pb, head_from_pb, head_to_pb
from domicile.wire.subject_orders import orders_to_pages
from domicile.wire.subjects import hold_to_pb, receipt_from_pb, request_to_pb
from domicile.wire.topology import topology_to_pb, with_backup

# GetAuditHead lists at most this many closed audit chains of a node, the newest (a node closes
# one per restore; the count of the rest is in the answer).
CLOSED_CHAINS_LISTED_MAX = 100

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME: str = cpb.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


class CoordinatorServicer(cpb_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        registry: Registry,
        desk: SubjectDesk,
        hub: WatchHub[Topology],
        metrics: CoordinatorMetrics,
        heads: AuditHeadBook,
        gate: Gate,
        response_bytes_max: int = 64 * 1024 * 1024,
        orders_hub: WatchHub[SubjectOrders] | None = None,
    ) -> None:
        self._gate = gate
        self._cluster = ClusterResource(gate.cluster or DEFAULT_CLUSTER_NAME)
        self._registry = registry
        self._desk = desk
        self._response_bytes_max = response_bytes_max
        self._heads = heads
        self._hub = hub
        self._metrics = metrics
        # Every watcher is sent the same Topology object per revision; convert it once.
        self._last_topology: Topology | None = None
        self._last_pb = cpb.Topology()
        # The same with a region's backup section, for that region's nodes.
        self._region_pb_of: Topology | None = None
        self._region_pb: dict[str, cpb.Topology] = {}
        # (A hub with no watcher is falsy: compare with None.)
        self._orders_hub: WatchHub[SubjectOrders] = (
            orders_hub if orders_hub is not None else WatchHub(hub.watchers_max)
        )
        # Likewise the pages of the orders set in force, cut once per set.
        self._last_orders: SubjectOrders | None = None
        self._last_pages: list[cpb.WatchSubjectOrdersResponse] = []

    async def RegisterNode(
        self, request: cpb.RegisterNodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.RegisterNodeResponse:
        def register() -> tuple[int, bytes, list[tuple[str, str]]]:
            # A node that pages the erased-subject list gets only its key here. One that does not
            # gets the list whole, or is refused before it is registered when the list is too
            # long to send whole (never a part of it).
            erased: list[tuple[str, str]] = []
            if request.lists_erased_subjects:
                key = self._desk.erased_key()
            else:
                key, erased = self._desk.erased_subjects()
            revision = self._registry.register(
                request.node_id,
                request.region,
                request.address,
                request.metrics_address,
                request.epoch,
                request.last_lsn,
            )
            return revision, key, erased

        # Only the node itself registers (and so changes its addresses): its certificate must
        # name the node id and region of the request.
        revision, key, erased = await self._unary(
            "RegisterNode", context, register, ExpectedPeer.node(request.region, request.node_id)
        )
        return cpb.RegisterNodeResponse(
            topology_revision=revision,
            heartbeat_interval_ms=self._registry.heartbeat_interval_ms,
            erased_subjects_key=key,
            erased_subjects=[cpb.ErasedSubject(subject_hash=h, request_id=r) for h, r in erased],
            coordinator_unix_ms=self._registry.wall_ms(),
        )

    async def ListErasedSubjects(
        self, request: cpb.ListErasedSubjectsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.ListErasedSubjectsResponse:
        # The hashes and request ids say who was erased to anyone who can guess a subject id and
        # holds the key, which comes with them: only nodes, whatever the policies allow.
        page = await self._unary(
            "ListErasedSubjects",
            context,
            lambda: self._desk.erased_page(request.after_request_id, request.limit),
            ExpectedPeer.node(),
        )
        return cpb.ListErasedSubjectsResponse(
            erased_subjects_key=page.key,
            erased_subjects=[cpb.ErasedSubject(subject_hash=h, request_id=r) for h, r in page.entries],
            next_after_request_id=page.next_after_request_id,
            erased_total=page.total,
        )

    async def Heartbeat(
        self, request: cpb.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.HeartbeatResponse:
        seen = self._registry.log_head(request.node_id, request.epoch)
        revision = await self._unary(
            "Heartbeat",
            context,
            lambda: self._registry.heartbeat(
                request.node_id, request.topology_revision, request.last_lsn, request.epoch
            ),
            # The region the node registered in, not just its id: a certificate for the same node
            # id in another region must not keep this one marked up.
            ExpectedPeer.node(self._registry.region_of(request.node_id), request.node_id),
        )
        return cpb.HeartbeatResponse(
            topology_revision=revision, coordinator_unix_ms=self._registry.wall_ms(), last_lsn_seen=seen
        )

    async def RemoveNode(
        self, request: cpb.RemoveNodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.RemoveNodeResponse:
        revision = await self._unary("RemoveNode", context, lambda: self._registry.remove(request.node_id))
        return cpb.RemoveNodeResponse(topology_revision=revision)

    async def GetTopology(
        self, request: cpb.GetTopologyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.GetTopologyResponse:
        topology = await self._unary("GetTopology", context, self._registry.topology)
        # Erasure orders and legal holds name data subjects; the topology no longer carries them
        # (nodes get them on WatchSubjectOrders, DPOs list them), so every caller sees the same.
        message = self._to_pb(topology)
        return cpb.GetTopologyResponse(topology=message)

    async def WatchTopology(  # type: ignore[override]
        self, request: cpb.WatchTopologyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cpb.WatchTopologyResponse]:
        try:
            caller = self._gate.check(context, "coordinator.WatchTopology", self._cluster)
            backup_region = self._backup_region(caller, request.region)
            if caller.principal is None or caller.principal.kind is PrincipalKind.NODE:
                # A node's revision ahead of this coordinator's (which lost its state) moves it
                # on; a client's says nothing of the cluster and moves nothing.
                self._registry.catch_up(request.after_revision)
            watcher = self._hub.subscribe()
        except DomicileError as exc:
            await context.abort(status_for(exc), exc.message)
            return
        try:
            sent = request.after_revision
            pending: Topology | None = self._registry.topology()
            # Subscribing and reading the current topology happen without a suspension point
            # in between, so no revision can slip past this watcher.
            while pending is not None:
                if pending.revision > sent:
                    yield cpb.WatchTopologyResponse(topology=self._for_region(pending, backup_region))
                    sent = pending.revision
                pending = await watcher.next()
        finally:
            self._hub.unsubscribe(watcher)

    async def WatchSubjectOrders(  # type: ignore[override]
        self, request: cpb.WatchSubjectOrdersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cpb.WatchSubjectOrdersResponse]:
        try:
            # Orders and holds name data subjects: only nodes, which carry them out.
            self._gate.check(context, "coordinator.WatchSubjectOrders", self._cluster)
            self._registry.catch_up(request.after_revision)
            watcher = self._orders_hub.subscribe()
        except DomicileError as exc:
            await context.abort(status_for(exc), exc.message)
            return
        try:
            sent = request.after_revision
            pending: SubjectOrders | None = self._registry.orders()
            # As in WatchTopology: no suspension point between subscribing and reading the set.
            while pending is not None:
                if pending.revision > sent:
                    for page in self._pages(pending):
                        yield page
                    sent = pending.revision
                pending = await watcher.next()
        finally:
            self._orders_hub.unsubscribe(watcher)

    async def ExportAuditHead(
        self, request: cpb.ExportAuditHeadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.ExportAuditHeadResponse:
        def accept(caller: Caller) -> int:
            if not request.HasField("head"):
                raise InvalidArgument("an ExportAuditHead request needs a head")
            head = head_from_pb(request.head)
            # On an authenticated port the key must be the one the node's certificate binds.
            principal = caller.principal
            binding = None if principal is None else KeyBinding(principal.audit_key or b"")
            try:
                return self._heads.accept(
                    head, binding, (request.extends_size, request.extends_hash), request.incarnation
                )
            except FailedPrecondition:
                self._metrics.audit_heads_refused.labels(region=head.region).inc()
                log.error("refused audit head of region %s at size %d", head.region, head.size)
                raise

        # A head comes only from the node it names (node id and region, both signed into it): the
        # first head accepted pins the region's signing key, so it must not come from whoever
        # calls first, nor from another node of the region speaking for it.
        head = request.head if request.HasField("head") else None
        exporter = (
            ExpectedPeer.node(head.region or None, head.node_id or None) if head else ExpectedPeer.node()
        )
        size = await self._unary_as("ExportAuditHead", context, accept, exporter)
        return cpb.ExportAuditHeadResponse(accepted_size=size)

    async def GetAuditHead(
        self, request: cpb.GetAuditHeadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.GetAuditHeadResponse:
        def get() -> tuple[AcceptedHead, list[ClosedChain]]:
            accepted = self._heads.get(request.region, request.node_id)
            return accepted, self._heads.closed(accepted.head.node_id)

        accepted, closed = await self._unary("GetAuditHead", context, get)
        response = cpb.GetAuditHeadResponse(
            accepted_unix_ms=accepted.accepted_unix_ms, incarnation=accepted.incarnation
        )
        head_to_pb(accepted.head, response.head)
        listed = closed[max(0, len(closed) - CLOSED_CHAINS_LISTED_MAX) :]
        for chain in listed:
            closed_chain_to_pb(chain, response.closed_chains.add())
        response.closed_chains_omitted = len(closed) - len(listed)
        return response

    # --- data-subject requests and legal holds ------------------------------------------------

    async def EraseSubject(
        self, request: cpb.EraseSubjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.EraseSubjectResponse:
        # The DPO's verified identity travels with the order: each region audits its steps as it.
        opened = await self._unary_as(
            "EraseSubject",
            context,
            lambda caller: self._desk.erase(
                request.subject_id, request.reason, request.subject_jurisdiction, caller.identity
            ),
        )
        return cpb.EraseSubjectResponse(request=request_to_pb(opened))

    async def OpenSubjectRequest(
        self, request: cpb.OpenSubjectRequestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.OpenSubjectRequestResponse:
        def open_access() -> SubjectRequest:
            check_open_kind(request.kind)
            return self._desk.open_access(request.subject_id, request.subject_jurisdiction, request.reason)

        opened = await self._unary("OpenSubjectRequest", context, open_access)
        return cpb.OpenSubjectRequestResponse(request=request_to_pb(opened))

    async def CompleteSubjectRequest(
        self, request: cpb.CompleteSubjectRequestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.CompleteSubjectRequestResponse:
        done = await self._unary(
            "CompleteSubjectRequest",
            context,
            lambda: self._desk.complete_access(request.request_id, request.records_exported),
        )
        return cpb.CompleteSubjectRequestResponse(request=request_to_pb(done))

    async def ReportErasure(
        self, request: cpb.ReportErasureRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.ReportErasureResponse:
        def report() -> SubjectRequest:
            if not request.HasField("receipt"):
                raise InvalidArgument(
                    "a ReportErasure request needs a receipt: the region, node and what it erased and kept"
                )
            return self._desk.report_erasure(request.request_id, receipt_from_pb(request.receipt))

        receipt = request.receipt if request.HasField("receipt") else None
        reporter = ExpectedPeer.node(receipt.region or None, receipt.node_id or None) if receipt else None
        updated = await self._unary("ReportErasure", context, report, reporter or ExpectedPeer.node())
        return cpb.ReportErasureResponse(request=request_to_pb(updated))

    async def GetSubjectRequest(
        self, request: cpb.GetSubjectRequestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.GetSubjectRequestResponse:
        found = await self._unary("GetSubjectRequest", context, lambda: self._desk.get(request.request_id))
        return cpb.GetSubjectRequestResponse(request=request_to_pb(found))

    async def ListSubjectRequests(
        self, request: cpb.ListSubjectRequestsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.ListSubjectRequestsResponse:
        found = await self._unary(
            "ListSubjectRequests", context, lambda: self._desk.list(request.open_only, request.limit)
        )
        response = cpb.ListSubjectRequestsResponse()
        # Receipts can make requests large; fewer than `limit` is within the contract ("at most"),
        # a response the client cannot receive is not.
        budget = self._response_bytes_max // 2
        for item in found:
            msg = request_to_pb(item)
            budget -= msg.ByteSize() + 8
            if budget < 0:
                log.warning(
                    "ListSubjectRequests answered with %d requests to stay under the size limit",
                    len(response.requests),
                )
                break
            response.requests.append(msg)
        return response

    async def PlaceLegalHold(
        self, request: cpb.PlaceLegalHoldRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.PlaceLegalHoldResponse:
        def place(caller: Caller) -> LegalHold:
            if int(request.scope) not in (HoldScope.SUBJECT, HoldScope.NAMESPACE, HoldScope.KEY):
                raise InvalidArgument(
                    f"legal hold scope {request.scope} is not allowed; use LEGAL_HOLD_SCOPE_SUBJECT, "
                    "LEGAL_HOLD_SCOPE_NAMESPACE or LEGAL_HOLD_SCOPE_KEY"
                )
            return self._desk.place_hold(
                HoldScope(request.scope),
                request.subject_id,
                request.namespace,
                request.key,
                request.reason,
                caller.identity,
            )

        hold = await self._unary_as("PlaceLegalHold", context, place)
        return cpb.PlaceLegalHoldResponse(hold=hold_to_pb(hold))

    async def ReleaseLegalHold(
        self, request: cpb.ReleaseLegalHoldRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.ReleaseLegalHoldResponse:
        hold = await self._unary_as(
            "ReleaseLegalHold",
            context,
            lambda caller: self._desk.release_hold(request.hold_id, request.reason, caller.identity),
        )
        return cpb.ReleaseLegalHoldResponse(hold=hold_to_pb(hold))

    async def ListLegalHolds(
        self, request: cpb.ListLegalHoldsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.ListLegalHoldsResponse:
        holds = await self._unary("ListLegalHolds", context, self._desk.holds)
        return cpb.ListLegalHoldsResponse(holds=[hold_to_pb(h) for h in holds])

    async def _unary(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        call: Callable[[], T],
        expected: ExpectedPeer | None = None,
    ) -> T:
        """`expected`: the identity the call needs beyond what the policies decide (a node's
        own registration, heartbeat, audit head or receipt)."""
        return await self._unary_as(method, context, lambda caller: call(), expected)

    async def _unary_as(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        call: Callable[[Caller], T],
        expected: ExpectedPeer | None = None,
    ) -> T:
        """_unary, for a call that needs to know its verified caller."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            caller = self._gate.check(context, f"coordinator.{method}", self._cluster, expected)
            return call(caller)
        except DomicileError as exc:
            code = status_for(exc)
            await context.abort(code, exc.message)
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            await context.abort(code, f"{method} failed inside the coordinator; see the coordinator log")
        finally:
            self._metrics.rpc_latency.labels(method=method, code=code.name).observe(
                time.perf_counter() - started
            )
        raise RuntimeError("context.abort returned instead of raising")

    def _to_pb(self, topology: Topology) -> cpb.Topology:
        if topology is not self._last_topology:
            self._last_pb = topology_to_pb(topology)
            self._last_topology = topology
        return self._last_pb

    def _backup_region(self, caller: Caller, region: str) -> str:
        """The region whose backup section the watcher is sent: only a node's own (on an
        insecure port, where nothing is verified, the region the request names)."""
        if not region:
            return ""
        principal = caller.principal
        if principal is not None and (principal.kind is not PrincipalKind.NODE or principal.region != region):
            raise refuse_wrong_peer(
                self._gate,
                "coordinator.WatchTopology",
                caller,
                f"only a node of region {region} may watch the topology with its backup section; "
                "watch without a region",
            )
        return region

    def _for_region(self, topology: Topology, region: str) -> cpb.Topology:
        """The topology message with the backup section of `region`, converted once per revision
        and region."""
        message = self._to_pb(topology)
        spec = self._registry.cluster.region(region) if region else None
        if spec is None or spec.backup is None:
            return message
        if self._region_pb_of is not topology:
            self._region_pb.clear()
            self._region_pb_of = topology
        if region not in self._region_pb:
            self._region_pb[region] = with_backup(message, spec.backup)
        return self._region_pb[region]

    def _pages(self, orders: SubjectOrders) -> list[cpb.WatchSubjectOrdersResponse]:
        if orders is not self._last_orders:
            self._last_pages = orders_to_pages(orders)
            self._last_orders = orders
        return self._last_pages
