"""A Get's cache lookup sent while its request is decoded, before anything else of the call runs.

A Redis hit waits on one round trip to Redis, and the node's own work for the call (gRPC's
servicer context, the per-peer call bound, the message bounds, the deadline, authentication and
authorization, the request's checks) can overlap it only once the GET is on its way. Sent from
the Get handler, about a third of that work came before the GET; sent here, from the request
deserializer the call layer gives Get (the first code of ours that sees the request, right after
its size was checked), all of it overlaps the round trip.

Nothing is read from the lookup unless the call reaches the Get handler, which checks the
request, authenticates and authorizes the caller first (StorageService.read_ahead says why
sending it earlier reveals nothing). The wrapper is the outermost of the call layer's, so that
whatever refuses the call before the handler (the per-peer call bound) still ends inside its
behavior, which drops the lookup unseen.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from domicile.v1 import storage_node_pb2 as spb
from node.cache.read_cache import ReadAhead

GET_METHOD = "/domicile.v1.StorageNodeService/Get"


class LookupSender(Protocol):
    """What sends a Get's lookup (node.service.StorageService)."""

    def read_ahead(self, namespace: str, key: str) -> ReadAhead | None: ...


class AheadGet:
    """A decoded Get request and its cache lookup, already sent."""

    __slots__ = ("ahead", "request")

    def __init__(self, request: spb.GetRequest, ahead: ReadAhead) -> None:
        self.request = request
        self.ahead = ahead


class GetReadAhead:
    """A call-layer wrapper (domicile.wire.call_layer): Get's requests arrive at the handler as
    AheadGet when the lookup was sent, as GetRequest otherwise; every other method is left as
    it is."""

    def __init__(self, service: LookupSender) -> None:
        self.service = service

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if method != GET_METHOD or handler.unary_unary is None:
            return handler
        decode = handler.request_deserializer
        inner = handler.unary_unary
        service = self.service

        def deserialize(data: bytes) -> Any:
            request = decode(data) if decode is not None else data
            # Anything else (a request refused for its size) goes on as it came.
            if type(request) is not spb.GetRequest:
                return request
            ahead = service.read_ahead(request.namespace, request.key)
            return request if ahead is None else AheadGet(request, ahead)

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if type(request) is not AheadGet:
                return await inner(request, context)
            try:
                return await inner(request, context)
            finally:
                request.ahead.drop()  # a no-op when the lookup took its reply

        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=deserialize, response_serializer=handler.response_serializer
        )
