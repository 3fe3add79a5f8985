"""StorageNodeService servicer: translate, delegate to node.service, map errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from domicile import codec, errors
from domicile.model import Classification
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from node.api.errors import abort_with, status_for
from node.metrics import NodeMetrics
from node.service import PutCommand, ReadResult, StorageService

T = TypeVar("T")
log = logging.getLogger("domicile.node.api")


async def guarded(
    metrics: NodeMetrics,
    method: str,
    context: grpc.aio.ServicerContext,
    default_deadline_s: float,
    work: Callable[[], Awaitable[T]],
) -> T:
    """Runs `work` under the call's deadline (or the default one when the caller set none),
    records latency, and turns domain errors into statuses."""
    started = time.perf_counter()
    remaining = context.time_remaining()
    timeout = default_deadline_s if remaining is None else max(remaining, 0.0)
    try:
        return await asyncio.wait_for(work(), timeout)
    except errors.DomicileError as exc:
        metrics.rpc_errors.labels(method, status_for(exc).name).inc()
        await abort_with(context, exc)
        raise  # abort raises; this keeps type checkers aware
    except TimeoutError:
        metrics.rpc_errors.labels(method, "DEADLINE_EXCEEDED").inc()
        await abort_with(
            context, errors.DeadlineExceeded(f"{method} did not complete within {timeout:.3f} s")
        )
        raise
    except asyncio.CancelledError:
        metrics.rpc_errors.labels(method, "CANCELLED").inc()
        raise
    except grpc.aio.AbortError:
        raise
    except Exception:
        # A bug, not a bad request: counted so the error-ratio alert sees it; gRPC answers INTERNAL.
        metrics.rpc_errors.labels(method, "INTERNAL").inc()
        log.exception("%s failed unexpectedly", method)
        raise
    finally:
        metrics.rpc_latency.labels(method).observe(time.perf_counter() - started)


def _classification(value: int) -> Classification:
    try:
        return Classification(value)
    except ValueError:
        raise errors.InvalidArgument(
            f"unknown classification value {value}; allowed: 0 (namespace default) to 6"
        ) from None


def _fill_read(result: ReadResult, versions: Any, context: Any) -> None:
    for v in result.versions:
        codec.version_to_pb(v, versions.add())
    codec.context_to_pb(result.context, context)


class StorageServicer(spb_grpc.StorageNodeServiceServicer):
    def __init__(self, service: StorageService, status: Callable[[], spb.GetNodeStatusResponse]) -> None:
        self.service = service
        self.metrics = service.metrics
        self.deadline_s = service.limits.request_deadline_default_s
        self._status = status

    async def Put(self, request: spb.PutRequest, context: grpc.aio.ServicerContext) -> spb.PutResponse:
        async def work() -> spb.PutResponse:
            cmd = PutCommand(
                namespace=request.namespace,
                key=request.key,
                value=request.value,
                content_type=request.content_type,
                context=codec.context_from_pb(request.context, self.service.limits)
                if request.HasField("context")
                else None,
                subject_id=request.subject_id,
                subject_jurisdiction=request.subject_jurisdiction,
                classification=_classification(request.classification),
            )
            committed = await self.service.put(cmd)
            response = spb.PutResponse(lsn=committed.mutation.lsn, region=self.service.region)
            codec.version_to_pb(committed.mutation.version, response.version)
            codec.context_to_pb(committed.state.context, response.context)
            return response

        return await guarded(self.metrics, "Put", context, self.deadline_s, work)

    async def Get(self, request: spb.GetRequest, context: grpc.aio.ServicerContext) -> spb.GetResponse:
        async def work() -> spb.GetResponse:
            result = self.service.get(request.namespace, request.key)
            response = spb.GetResponse(found=result.found, region=self.service.region)
            _fill_read(result, response.versions, response.context)
            return response

        return await guarded(self.metrics, "Get", context, self.deadline_s, work)

    async def Delete(
        self, request: spb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> spb.DeleteResponse:
        async def work() -> spb.DeleteResponse:
            ctx = (
                codec.context_from_pb(request.context, self.service.limits)
                if request.HasField("context")
                else None
            )
            committed = await self.service.delete(request.namespace, request.key, ctx)
            response = spb.DeleteResponse(existed=committed.had_live, lsn=committed.mutation.lsn)
            codec.version_to_pb(committed.mutation.version, response.version)
            codec.context_to_pb(committed.state.context, response.context)
            return response

        return await guarded(self.metrics, "Delete", context, self.deadline_s, work)

    async def Scan(self, request: spb.ScanRequest, context: grpc.aio.ServicerContext) -> spb.ScanResponse:
        async def work() -> spb.ScanResponse:
            page = self.service.scan(
                request.namespace, request.key_prefix, request.page_size, request.page_token
            )
            response = spb.ScanResponse(next_page_token=page.next_page_token)
            for key, result in page.items:
                item = response.items.add(key=key)
                _fill_read(result, item.versions, item.context)
            return response

        return await guarded(self.metrics, "Scan", context, self.deadline_s, work)

    async def GetNodeStatus(
        self, request: spb.GetNodeStatusRequest, context: grpc.aio.ServicerContext
    ) -> spb.GetNodeStatusResponse:
        async def work() -> spb.GetNodeStatusResponse:
            return self._status()

        return await guarded(self.metrics, "GetNodeStatus", context, self.deadline_s, work)
