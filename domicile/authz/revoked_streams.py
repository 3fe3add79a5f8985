"""Streams whose caller's certificate is revoked or expires while they are open end at their next
message.

The gate checks a certificate when a call starts. A stream lives on: a replication stream for
the life of the link, a topology or subject-orders watch for the life of the node. Revoking a
stolen node key must stop the writes it replicates and the orders (which name data subjects) it
receives, not only its next call. This wrapper reads the caller's certificate serial once, when
the stream opens, and before each message it lets through, either way, checks it against the
revocations in force (ServerSecurity.revoked: a set lookup; the list is looked at again at most
once a second), and the certificate's validity: a stream does not outlive the certificate it was
opened with. A handler that answers with context.write() instead of yielding (grpc's health
Watch) gets a context whose writes are checked the same way. A revoked stream ends with
UNAUTHENTICATED, counted and audited like every refusal.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from domicile.authz.gate import Gate, Reason, Refusal, check_validity
from domicile.errors import Unauthenticated
from domicile.identity.revocation import serial_text
from domicile.wire.call_layer import WrappingInterceptor


class RevokedStreamsGuard(WrappingInterceptor):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler of `method`, guarded when it streams (unary calls are the gate's)."""
        if not self.gate.enforcing:
            return handler
        action = method.strip("/").replace("/", ".")
        decode, encode = handler.request_deserializer, handler.response_serializer
        if handler.unary_stream is not None:
            replies = handler.unary_stream

            if not inspect.isasyncgenfunction(replies):
                # It writes its answers itself (context.write): each write is checked.
                async def writes(request: Any, context: Any) -> None:
                    await replies(request, _CheckedWrites(context, self._checker(context, action)))

                return grpc.unary_stream_rpc_method_handler(writes, decode, encode)

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                check = self._checker(context, action)
                async for response in replies(request, context):
                    await check()
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, decode, encode)
        if handler.stream_stream is not None:
            both = handler.stream_stream

            async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                check = self._checker(context, action)

                async def checked() -> AsyncIterator[Any]:
                    async for request in requests:
                        await check()
                        yield request

                async for response in both(checked(), context):
                    await check()
                    yield response

            return grpc.stream_stream_rpc_method_handler(stream_stream, decode, encode)
        return handler

    def _checker(self, context: Any, action: str) -> Callable[[], Awaitable[None]]:
        """What a stream runs before each message: nothing for a caller without a certificate the
        gate knows (the handler's own check refuses it), else the revocation check."""
        try:
            serial, identity, valid = self.gate.certificate_serial(context)
        except Exception:  # no certificate: the handler's gate check refuses the call
            return _nothing
        gate = self.gate

        async def check() -> None:
            if serial in gate.revoked():
                message = (
                    f"the certificate of {identity} (serial {serial_text(serial)}) was revoked by the "
                    "cluster's revocation list while this stream was open"
                )
                gate.on_refusal(Refusal(action, Reason.REVOKED, identity, message))
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            try:
                check_validity(identity, valid)
            except Unauthenticated as expired:
                gate.on_refusal(Refusal(action, Reason.UNAUTHENTICATED, identity, expired.message))
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, expired.message)

        return check


async def _nothing() -> None:
    return None


class _CheckedWrites:
    """A call's context whose write() runs the check first; everything else is the context's."""

    def __init__(self, context: Any, check: Callable[[], Awaitable[None]]) -> None:
        self._context = context
        self._check = check

    async def write(self, message: Any) -> None:
        await self._check()
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)
