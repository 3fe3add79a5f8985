"""Handlers wrapped once at registration (domicile.wire.call_layer), on a real grpc.aio server:
the wrappers run on every call in the order given, each method is wrapped once however many
calls it serves, a method only a generic handler knows is wrapped on its first call, and an
unknown method is UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from domicile.wire.call_layer import CallLayer

SERVICE = "test.Echo"
CALLS = 5


class Recorder:
    """Wrappers that note when they wrap a handler and, on each call, that they ran."""

    def __init__(self) -> None:
        self.wrapped: list[tuple[str, str]] = []
        self.ran: list[str] = []

    def wrapper(self, name: str) -> Any:
        def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
            self.wrapped.append((name, method))
            inner = handler.unary_unary

            async def behavior(request: bytes, context: Any) -> bytes:
                self.ran.append(name)
                return await inner(request, context)  # type: ignore[no-any-return]

            return grpc.unary_unary_rpc_method_handler(behavior)

        return wrap


async def echo(request: bytes, context: Any) -> bytes:
    return request


@pytest.fixture
async def served() -> AsyncIterator[tuple[Recorder, CallLayer, grpc.aio.Channel]]:
    recorder = Recorder()
    layer = CallLayer([recorder.wrapper("outer"), recorder.wrapper("inner")])
    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    # What a generated add_*_to_server function does: both registrations.
    layer.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    layer.add_registered_method_handlers(SERVICE, handlers)
    # A service known only to a generic handler.
    generic = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    layer.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Generic", generic),))
    server = grpc.aio.server(handlers=[layer])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield recorder, layer, channel
    await channel.close()
    await server.stop(None)


async def test_wrappers_run_on_every_call_outermost_first(
    served: tuple[Recorder, CallLayer, grpc.aio.Channel],
) -> None:
    recorder, layer, channel = served
    call = channel.unary_unary(f"/{SERVICE}/Echo")
    for i in range(CALLS):
        assert await call(b"%d" % i, timeout=5) == b"%d" % i
    assert recorder.ran == ["outer", "inner"] * CALLS
    # Wrapped at registration, innermost first, once per method.
    assert recorder.wrapped == [("inner", f"/{SERVICE}/Echo"), ("outer", f"/{SERVICE}/Echo")]
    assert layer.methods == [f"/{SERVICE}/Echo"]


async def test_a_generic_only_method_is_wrapped_once_on_first_use(
    served: tuple[Recorder, CallLayer, grpc.aio.Channel],
) -> None:
    recorder, _, channel = served
    before = len(recorder.wrapped)
    call = channel.unary_unary("/test.Generic/Echo")
    for _ in range(CALLS):
        assert await call(b"x", timeout=5) == b"x"
    assert recorder.wrapped[before:] == [("inner", "/test.Generic/Echo"), ("outer", "/test.Generic/Echo")]
    assert recorder.ran == ["outer", "inner"] * CALLS


async def test_an_unknown_method_is_unimplemented(
    served: tuple[Recorder, CallLayer, grpc.aio.Channel],
) -> None:
    recorder, _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Nothing/Echo")(b"x", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert recorder.ran == []
