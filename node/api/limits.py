"""Message bounds of the node's gRPC server, per service.

gRPC sets one receive and one send bound per server, and the node's server carries both the
storage service (single records) and the replication service (batches of up to 4 MiB of
values). The server-wide bounds are the larger, replication's; this interceptor holds every
storage call to the storage request bound, refusing a larger request before it is decoded, and
every unary storage call to the answer bound too, refusing a larger answer before it is sent
(it encodes the answer itself, once, to measure it), with RESOURCE_EXHAUSTED and a message
naming the bound. A storage call that streams its answers (one request each) has its request
bounded alike; its answers stay within the server-wide bound. A refused request is handed to
`on_too_large`, which the node counts and audits as a refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from domicile.v1 import storage_node_pb2
from domicile.wire.call_layer import WrappingInterceptor
from domicile.wire.limits import (
    NODE_STREAMS_PER_CONNECTION_MAX,
    REPLICATION_MESSAGE_BYTES_MAX,
    SERVER_EXCLUSIVE_PORT_OPTIONS,
    SERVER_KEEPALIVE_OPTIONS,
    STORAGE_REQUEST_BYTES_MAX,
    STORAGE_RESPONSE_BYTES_MAX,
)

STORAGE_SERVICE = storage_node_pb2.DESCRIPTOR.services_by_name["StorageNodeService"].full_name

NODE_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", max(REPLICATION_MESSAGE_BYTES_MAX, STORAGE_REQUEST_BYTES_MAX)),
    ("grpc.max_send_message_length", max(REPLICATION_MESSAGE_BYTES_MAX, STORAGE_RESPONSE_BYTES_MAX)),
    ("grpc.max_concurrent_streams", NODE_STREAMS_PER_CONNECTION_MAX),
    *SERVER_KEEPALIVE_OPTIONS,
    *SERVER_EXCLUSIVE_PORT_OPTIONS,
]


@dataclass(frozen=True)
class MessageBounds:
    request_bytes_max: int
    response_bytes_max: int


@dataclass(frozen=True)
class _TooLarge:
    """Stands in for a request that was not decoded because it is too large."""

    size: int


# What the node does with a request refused for its size: (the call's context, its action
# such as storage.Put, the refusal's message).
OnTooLarge = Callable[[grpc.aio.ServicerContext, str, str], None]


class MessageLimits(WrappingInterceptor):
    def __init__(
        self,
        bounds: Mapping[str, MessageBounds] | None = None,
        on_too_large: OnTooLarge = lambda context, action, message: None,
    ) -> None:
        self.bounds = dict(
            bounds
            if bounds is not None
            else {STORAGE_SERVICE: MessageBounds(STORAGE_REQUEST_BYTES_MAX, STORAGE_RESPONSE_BYTES_MAX)}
        )
        self.on_too_large = on_too_large

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler of `method` (a full path) held to its service's bounds, if it has any
        (domicile.wire.call_layer applies this once per method)."""
        bounds = self.bounds.get(method.split("/")[1] if method.count("/") == 2 else "")
        if bounds is None:
            return handler
        name = method.rsplit("/", 1)[-1]
        if handler.unary_stream is not None:
            return _bounded_request(handler, name, bounds, self.on_too_large)
        if handler.unary_unary is None:
            # A stream of requests stays within the server-wide bounds.
            return handler
        return _bounded(handler, name, bounds, self.on_too_large)


def _request_bound(
    handler: grpc.RpcMethodHandler, name: str, bounds: MessageBounds, on_too_large: OnTooLarge
) -> tuple[Callable[[bytes], Any], Callable[[_TooLarge, grpc.aio.ServicerContext], Awaitable[None]]]:
    """A deserializer that stands `_TooLarge` in for a too-large request without decoding it,
    and the coroutine that refuses such a request (counted and audited) before any work."""
    decode = handler.request_deserializer

    def deserialize(data: bytes) -> Any:
        if len(data) > bounds.request_bytes_max:
            return _TooLarge(len(data))
        return decode(data) if decode is not None else data

    async def refuse(request: _TooLarge, context: grpc.aio.ServicerContext) -> None:
        message = (
            f"{name} request is {request.size} bytes; the storage service accepts at most "
            f"{bounds.request_bytes_max} bytes per request"
        )
        on_too_large(context, f"storage.{name}", message)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    return deserialize, refuse


def _bounded_request(
    handler: grpc.RpcMethodHandler, name: str, bounds: MessageBounds, on_too_large: OnTooLarge
) -> grpc.RpcMethodHandler:
    deserialize, refuse = _request_bound(handler, name, bounds, on_too_large)
    inner = handler.unary_stream

    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if type(request) is _TooLarge:
            await refuse(request, context)
        async for answer in inner(request, context):
            yield answer

    return grpc.unary_stream_rpc_method_handler(
        behavior, request_deserializer=deserialize, response_serializer=handler.response_serializer
    )


def _bounded(
    handler: grpc.RpcMethodHandler, name: str, bounds: MessageBounds, on_too_large: OnTooLarge
) -> grpc.RpcMethodHandler:
    deserialize, refuse = _request_bound(handler, name, bounds, on_too_large)
    encode = handler.response_serializer
    inner = handler.unary_unary

    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if type(request) is _TooLarge:
            await refuse(request, context)
        response = await inner(request, context)
        # Encoded here, once, and handed to gRPC as bytes: a message's ByteSize() encodes it
        # too (protobuf's upb backend keeps no cached size), so measuring it and then letting
        # gRPC serialize it would encode every answer twice.
        # A handler may answer with bytes already encoded (a Get answer kept for its next hit).
        data: bytes = response if isinstance(response, bytes) or encode is None else encode(response)
        if len(data) > bounds.response_bytes_max:
            # The reads bound their answers below this; reaching it is a bug, said clearly rather
            # than left to the transport.
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{name} answer would be {len(data)} bytes; the storage service sends at most "
                f"{bounds.response_bytes_max} bytes per answer",
            )
        return data

    # No response serializer: gRPC sends the bytes `behavior` returns as they are.
    return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=deserialize)
