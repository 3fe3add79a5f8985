"""The fault router moves bytes faithfully and applies each fault to the right direction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from torture.router import FaultRouter, cut_between


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def setup() -> AsyncIterator[tuple[FaultRouter, str, str]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    router = FaultRouter(seed=7)
    router.name(address, "echo")
    proxy = await router.listen("client")
    yield router, proxy, address
    await router.close()
    server.close()


async def _connect(proxy: str, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = proxy.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status = await reader.readuntil(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), status
    return reader, writer


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, wait_s: float = 2.0
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), wait_s)


async def test_bytes_pass_unchanged(setup: tuple[FaultRouter, str, str]) -> None:
    _router, proxy, address = setup
    reader, writer = await _connect(proxy, address)
    payload = bytes(range(256)) * 1000
    assert await _roundtrip(reader, writer, payload) == payload
    writer.close()


async def test_a_cut_holds_bytes_until_the_heal_then_delivers_them_in_order(
    setup: tuple[FaultRouter, str, str],
) -> None:
    router, proxy, address = setup
    reader, writer = await _connect(proxy, address)
    cut_between(router.rules, ["client"], ["echo"], both_ways=False)
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.3)
    router.heal()
    assert await asyncio.wait_for(reader.readexactly(4), 2.0) == b"held"
    writer.close()


async def test_a_one_way_cut_of_the_return_direction_holds_only_replies(
    setup: tuple[FaultRouter, str, str],
) -> None:
    router, proxy, address = setup
    reader, writer = await _connect(proxy, address)
    cut_between(router.rules, ["echo"], ["client"], both_ways=False)
    writer.write(b"ping")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.3)
    router.heal()
    assert await asyncio.wait_for(reader.readexactly(4), 2.0) == b"ping"


async def test_delay_shifts_each_direction(setup: tuple[FaultRouter, str, str]) -> None:
    router, proxy, address = setup
    reader, writer = await _connect(proxy, address)
    router.rules.delay_s[("client", "echo")] = 0.2
    started = time.monotonic()
    assert await _roundtrip(reader, writer, b"x") == b"x"
    # Not a timing assertion on the system under test: it checks the fault was applied at all.
    assert time.monotonic() - started >= 0.2


async def test_reset_aborts_connections_between_the_two(setup: tuple[FaultRouter, str, str]) -> None:
    router, proxy, address = setup
    reader, writer = await _connect(proxy, address)
    assert await _roundtrip(reader, writer, b"x") == b"x"
    assert router.reset("client", "echo") == 1
    assert await asyncio.wait_for(reader.read(1), 2.0) == b""


async def test_a_request_that_is_not_connect_is_refused(setup: tuple[FaultRouter, str, str]) -> None:
    _router, proxy, _address = setup
    host, _, port = proxy.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(100), 2.0)).startswith(b"HTTP/1.1 502")
