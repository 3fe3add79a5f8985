"""A bound on the calls one peer has in flight at a daemon (a node or the coordinator),
across all its connections.

HTTP/2 bounds the streams of one connection (NODE_STREAMS_PER_CONNECTION_MAX), but a peer may
open many connections, and each replication or export stream it holds open costs the daemon a
task and buffers. This interceptor counts the calls in flight per peer, a peer being the client
certificate it authenticated with (or, on an insecure port, its host), and refuses a call past
the bound with RESOURCE_EXHAUSTED and a message naming it, before the handler runs. The count
goes down when the call ends however it ends, so a peer that lets its calls go is served again.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from domicile.identity.peer import auth_context
from domicile.wire.call_layer import WrappingInterceptor

# Enough for the node's own peers (a sender holds one stream per link, a busy SDK client a few
# hundred unary calls) and well under what would starve the node of tasks.
PEER_CALLS_MAX_DEFAULT = 1024
PEER_KEYS_CACHED = 1024

# What the node does with a refused call: (the call's context, the peer's key, the bound).
OnRefused = Callable[[grpc.aio.ServicerContext, str, int], None]


def peer_key(context: grpc.aio.ServicerContext) -> str:
    """The certificate the peer authenticated with (a digest of it), else its host."""
    certificates = auth_context(context).get("x509_pem_cert")
    if certificates:
        return _certificate_key(certificates[0])
    peer = str(context.peer())  # ipv4:127.0.0.1:5555, ipv6:[::1]:5555
    host, _, _ = peer.rpartition(":")
    return "host:" + (host or peer)


@functools.lru_cache(maxsize=PEER_KEYS_CACHED)
def _certificate_key(pem: bytes) -> str:
    # A connection presents the same certificate on every call: digest each one once.
    return "cert:" + hashlib.sha256(pem).hexdigest()[:32]


class PeerConcurrency(WrappingInterceptor):
    def __init__(
        self,
        calls_max: int = PEER_CALLS_MAX_DEFAULT,
        on_refused: OnRefused = lambda context, peer, bound: None,
    ) -> None:
        if calls_max < 1:
            raise ValueError(f"calls_max is {calls_max}; it must be at least 1")
        self.calls_max = calls_max
        self.on_refused = on_refused
        # A plain dict: a Counter's missing key and its del run Python code, and a peer that
        # makes one call at a time adds and removes its key on every call.
        self.in_flight: dict[str, int] = {}

    def wrap(self, method_path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler of `method_path`, counted against its peer's bound (domicile.wire.call_layer
        applies this once per method; intercept_service on every call)."""
        method = method_path.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _enter(self, context: grpc.aio.ServicerContext, method: str) -> str:
        """The peer's key, counted in; a peer at its bound is refused (the call is aborted)."""
        peer = self._admit(context)
        if peer is None:
            peer = peer_key(context)
            self.on_refused(context, peer, self.calls_max)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{method}: this peer has {self.in_flight.get(peer, 0)} calls in flight at this "
                f"node, the most one peer may have ({self.calls_max}); let some finish, then retry",
            )
            raise AssertionError("context.abort returned")  # it raises; this keeps the type exact
        return peer

    def _admit(self, context: grpc.aio.ServicerContext) -> str | None:
        """The peer's key, counted in, or None when the peer is at its bound (nothing counted;
        `_enter` then refuses the call). No coroutine: the usual case of a unary call."""
        peer = peer_key(context)
        calls = self.in_flight.get(peer, 0)
        if calls >= self.calls_max:
            return None
        self.in_flight[peer] = calls + 1
        return peer

    def _leave(self, peer: str) -> None:
        calls = self.in_flight.get(peer, 0) - 1
        if calls > 0:
            self.in_flight[peer] = calls
        else:
            self.in_flight.pop(peer, None)

    def _unary(self, inner: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            peer = self._admit(context)
            if peer is None:
                peer = await self._enter(context, method)
            try:
                return await inner(request, context)
            finally:
                self._leave(peer)

        return behavior

    def _streaming(self, inner: Callable[..., Any], method: str) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            peer = await self._enter(context, method)
            try:
                result = inner(request, context)
                if hasattr(result, "__aiter__"):
                    async for response in result:
                        yield response
                else:
                    # A handler that writes with context.write() and returns (a coroutine).
                    await result
            finally:
                self._leave(peer)

        return behavior
