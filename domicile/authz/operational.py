"""Health, reflection and /metrics are for the cluster's own processes and its operators, not
for any holder of a cluster certificate: they tell what runs where and what it serves.

A server interceptor wraps the handlers of health and reflection so that each call first passes
the gate: the caller must be authenticated and be a node, the coordinator, or a client with a
role that watches or runs the cluster (monitor, operator, auditor); domicile.metrics_endpoint
applies the same rule to /metrics. Everyone else is refused with PERMISSION_DENIED (counted
and audited like every refusal). On an insecure port nothing is checked.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from domicile.authz.gate import Gate, refuse_wrong_peer
from domicile.errors import DomicileError, PermissionDenied, Unauthenticated
from domicile.identity.principal import WATCHING_ROLES, PrincipalKind
from domicile.wire.call_layer import WrappingInterceptor

GUARDED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
ROLES = WATCHING_ROLES
_CODES = {
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


class OperationalServicesGuard(WrappingInterceptor):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler of `method` (a full path), guarded if its service is one of
        GUARDED_SERVICES (domicile.wire.call_layer applies this once per method)."""
        service = method.split("/")[1] if method.count("/") == 2 else ""
        if service not in GUARDED_SERVICES or not self.gate.enforcing:
            return handler
        return _guarded(handler, method.strip("/").replace("/", "."), self._check)

    def _check(self, context: Any, action: str) -> None:
        caller = self.gate.authenticate(context, action)
        principal = caller.principal
        if principal is None or principal.kind in (PrincipalKind.NODE, PrincipalKind.COORDINATOR):
            return
        if principal.roles & ROLES:
            return
        raise refuse_wrong_peer(
            self.gate,
            action,
            caller,
            f"principal {caller.identity} may not call {action}: health and reflection are for the "
            f"cluster's nodes, its coordinator and clients with role {' or '.join(sorted(ROLES))}",
        )


async def _abort(context: Any, error: DomicileError) -> None:
    # By class, not exact type: a revoked certificate's refusal is a kind of Unauthenticated.
    code = next(
        (c for kind, c in _CODES.items() if isinstance(error, kind)), grpc.StatusCode.PERMISSION_DENIED
    )
    await context.abort(code, error.message)


def _guarded(
    handler: grpc.RpcMethodHandler, action: str, check: Callable[[Any, str], None]
) -> grpc.RpcMethodHandler:
    """The same handler, with `check` before its behaviour."""
    decode, encode = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            try:
                check(context, action)
            except (PermissionDenied, Unauthenticated) as error:
                await _abort(context, error)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, decode, encode)
    if handler.unary_stream is not None:
        streaming = handler.unary_stream

        if not inspect.isasyncgenfunction(streaming):
            # It writes its answers itself with context.write (grpc's health Watch).
            async def writes(request: Any, context: Any) -> None:
                try:
                    check(context, action)
                except (PermissionDenied, Unauthenticated) as error:
                    await _abort(context, error)
                await streaming(request, context)

            return grpc.unary_stream_rpc_method_handler(writes, decode, encode)

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                check(context, action)
            except (PermissionDenied, Unauthenticated) as error:
                await _abort(context, error)
            async for response in streaming(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, decode, encode)
    if handler.stream_stream is not None:
        both = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            try:
                check(context, action)
            except (PermissionDenied, Unauthenticated) as error:
                await _abort(context, error)
            async for response in both(requests, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, decode, encode)
    return handler
