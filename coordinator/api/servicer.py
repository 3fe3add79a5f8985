"""CoordinatorService: validate, delegate to the registry, map errors. Nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from coordinator.api.convert import topology_to_pb
from coordinator.api.errors import status_for
from coordinator.audit_heads import AuditHeadBook
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import Registry
from coordinator.topology import Topology
from coordinator.watch import WatchHub
from domicile import audit_wire
from domicile.errors import DomicileError, FailedPrecondition, InvalidArgument
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME: str = cpb.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


class CoordinatorServicer(cpb_grpc.CoordinatorServiceServicer):
    def __init__(
        self, registry: Registry, hub: WatchHub, metrics: CoordinatorMetrics, heads: AuditHeadBook
    ) -> None:
        self._registry = registry
        self._heads = heads
        self._hub = hub
        self._metrics = metrics
        # Every watcher is sent the same Topology object per revision; convert it once.
        self._last_topology: Topology | None = None
        self._last_pb = cpb.Topology()

    async def RegisterNode(
        self, request: cpb.RegisterNodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.RegisterNodeResponse:
        revision = await self._unary(
            "RegisterNode",
            context,
            lambda: self._registry.register(
                request.node_id, request.region, request.address, request.metrics_address
            ),
        )
        return cpb.RegisterNodeResponse(
            topology_revision=revision, heartbeat_interval_ms=self._registry.heartbeat_interval_ms
        )

    async def Heartbeat(
        self, request: cpb.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.HeartbeatResponse:
        revision = await self._unary(
            "Heartbeat",
            context,
            lambda: self._registry.heartbeat(request.node_id, request.topology_revision),
        )
        return cpb.HeartbeatResponse(topology_revision=revision)

    async def GetTopology(
        self, request: cpb.GetTopologyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.GetTopologyResponse:
        topology = await self._unary("GetTopology", context, self._registry.topology)
        return cpb.GetTopologyResponse(topology=self._to_pb(topology))

    async def WatchTopology(  # type: ignore[override]
        self, request: cpb.WatchTopologyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[cpb.WatchTopologyResponse]:
        try:
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
                    yield cpb.WatchTopologyResponse(topology=self._to_pb(pending))
                    sent = pending.revision
                pending = await watcher.next()
        finally:
            self._hub.unsubscribe(watcher)

    async def ExportAuditHead(
        self, request: cpb.ExportAuditHeadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.ExportAuditHeadResponse:
        def accept() -> int:
            if not request.HasField("head"):
                raise InvalidArgument("an ExportAuditHead request needs a head")
            head = audit_wire.head_from_pb(request.head)
            try:
                return self._heads.accept(head)
            except FailedPrecondition:
                self._metrics.audit_heads_refused.labels(region=head.region).inc()
                log.error("refused audit head of region %s at size %d", head.region, head.size)
                raise

        size = await self._unary("ExportAuditHead", context, accept)
        return cpb.ExportAuditHeadResponse(accepted_size=size)

    async def GetAuditHead(
        self, request: cpb.GetAuditHeadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cpb.GetAuditHeadResponse:
        accepted = await self._unary("GetAuditHead", context, lambda: self._heads.get(request.region))
        response = cpb.GetAuditHeadResponse(accepted_unix_ms=accepted.accepted_unix_ms)
        audit_wire.head_to_pb(accepted.head, response.head)
        return response

    async def _unary(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], T]
    ) -> T:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return call()
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
