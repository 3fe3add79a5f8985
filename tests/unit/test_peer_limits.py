"""The per-peer bound on calls in flight, on a real grpc.aio server: past the bound a call is
refused before its handler runs, every way a call ends gives its place back, and both unary and
streaming calls count."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from domicile.wire.call_layer import CallLayer
from domicile.wire.peer_limits import PeerConcurrency

SERVICE = "test.Slow"
BOUND = 3


class Slow:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def unary(self, request: bytes, context: Any) -> bytes:
        self.entered += 1
        await self.release.wait()
        return request

    async def stream(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        self.entered += 1
        async for request in requests:
            yield request


@pytest.fixture(params=["interceptor", "call_layer"])
async def served(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Slow, PeerConcurrency, grpc.aio.Channel]]:
    """The bound as the coordinator applies it (an interceptor) and as the node does (each
    handler wrapped once, domicile.wire.call_layer)."""
    slow = Slow()
    refused: list[str] = []
    limit = PeerConcurrency(BOUND, lambda context, peer, bound: refused.append(peer))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(slow.unary),
        "Stream": grpc.stream_stream_rpc_method_handler(slow.stream),
    }
    if request.param == "interceptor":
        server = grpc.aio.server(interceptors=[limit])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    else:
        layer = CallLayer([limit.wrap])
        layer.add_registered_method_handlers(SERVICE, handlers)
        server = grpc.aio.server(handlers=[layer])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield slow, limit, channel
    await channel.close()
    await server.stop(None)


async def until(check: Any) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_calls_past_the_bound_are_refused_and_places_come_back(
    served: tuple[Slow, PeerConcurrency, grpc.aio.Channel],
) -> None:
    slow, limit, channel = served
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    held = [asyncio.ensure_future(unary(b"x", timeout=10)) for _ in range(BOUND)]
    await until(lambda: slow.entered == BOUND)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await unary(b"one too many", timeout=5)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"the most one peer may have ({BOUND})" in (refused.value.details() or "")
    assert slow.entered == BOUND  # refused before its handler ran
    slow.release.set()
    assert await asyncio.gather(*held) == [b"x"] * BOUND
    await until(lambda: not limit.in_flight)
    assert await unary(b"again", timeout=5) == b"again"


async def test_a_cancelled_call_and_a_stream_give_their_place_back(
    served: tuple[Slow, PeerConcurrency, grpc.aio.Channel],
) -> None:
    slow, limit, channel = served
    stream = channel.stream_stream(f"/{SERVICE}/Stream")
    streams = [stream(timeout=10) for _ in range(BOUND)]
    for call in streams:
        await call.write(b"s")
        assert await call.read() == b"s"
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await unary(b"x", timeout=5)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    streams[0].cancel()
    await streams[1].done_writing()
    assert await streams[1].read() == grpc.aio.EOF
    await until(lambda: sum(limit.in_flight.values()) == BOUND - 2)
    slow.release.set()
    assert await unary(b"x", timeout=5) == b"x"
    streams[2].cancel()
    await until(lambda: not limit.in_flight)


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PeerConcurrency(0)
