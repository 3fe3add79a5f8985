"""Per-call wrappers applied once, when a service is registered, instead of on every call.

A grpc.aio server interceptor runs on every call: a chain of coroutines that looks the method
up and builds a new wrapped handler each time. And a server with registered methods waits, for
every call it accepts, on one pending request per registered method (grpc.aio's serving loop
calls asyncio.wait over all of them), so each call costs in proportion to the number of methods
the server has. `CallLayer` does the same job without either: the generated
`add_*Servicer_to_server(servicer, layer)` functions hand it their method handlers, it wraps
each one once with the given wrappers, and the server gets the layer as its one generic handler
(a dict lookup per call) and no registered methods.

A wrapper is `(full method path, handler) -> handler`; the first one given is the outermost,
as the first interceptor of a server is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc

Wrapper = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A wrapper (`wrap`, for a CallLayer) that also serves as a server interceptor, for a
    server without a CallLayer (the coordinator's): it wraps each call's handler the same way."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return None if handler is None else self.wrap(handler_call_details.method or "", handler)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class CallLayer(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Stands in for the server while services are added, then serves as its generic handler."""

    def __init__(self, wrappers: Sequence[Wrapper]) -> None:
        self._wrappers = tuple(wrappers)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        # Methods only a generic handler knows, wrapped on first use: (the handler it gave, wrapped).
        self._looked_up: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        for wrapper in reversed(self._wrappers):
            handler = wrapper(method, handler)
        return handler

    # -- the part of grpc.aio.Server that the generated add_*_to_server functions call ----------

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in method_handlers.items():
            method = f"/{service_name}/{name}"
            self._handlers[method] = self.wrap(method, handler)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        # The generated code registers every method both ways: these answer only methods that
        # were not registered (a hand-written generic handler).
        self._generic.extend(generic_rpc_handlers)

    # -- grpc.GenericRpcHandler ----------------------------------------------------------------

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        for generic in self._generic:
            found = generic.service(handler_call_details)
            if found is not None:
                known = self._looked_up.get(method)
                if known is None or known[0] is not found:
                    known = self._looked_up[method] = (found, self.wrap(method, found))
                return known[1]
        return None

    @property
    def methods(self) -> list[str]:
        """The registered methods (full paths)."""
        return sorted(self._handlers)
