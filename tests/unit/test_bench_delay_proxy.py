"""The benchmark's delay proxy adds its delay in each direction and nothing else: bytes keep
their order, a large transfer is not slowed to a chunk per delay, EOF is forwarded, and what it
adds past the delay is measured."""

from __future__ import annotations

import asyncio
import time

import uvloop

from bench.delay_proxy import DelayProxy, Lateness

DELAY_S = 0.03


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _through_proxy() -> tuple[asyncio.Server, DelayProxy, asyncio.StreamReader, asyncio.StreamWriter]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = DelayProxy(f"127.0.0.1:{port}", DELAY_S)
    host, _, proxy_port = (await proxy.start()).rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(proxy_port))
    return server, proxy, reader, writer


async def _close(server: asyncio.Server, proxy: DelayProxy, writer: asyncio.StreamWriter) -> None:
    writer.close()
    await proxy.stop()
    server.close()
    await server.wait_closed()


async def test_a_round_trip_takes_the_delay_each_way_and_keeps_the_bytes_in_order() -> None:
    await _round_trip()


def test_the_proxy_runs_on_uvloop_as_it_does_in_the_benchmark() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_round_trip())


async def _round_trip() -> None:
    server, proxy, reader, writer = await _through_proxy()
    try:
        started = time.monotonic()
        sent = b"".join(f"{i:06d}".encode() for i in range(1000))
        for i in range(0, len(sent), 600):
            writer.write(sent[i : i + 600])
            await asyncio.sleep(0.001)
        got = await asyncio.wait_for(reader.readexactly(len(sent)), 5)
        elapsed = time.monotonic() - started
        assert got == sent
        # Two one-way delays at least; the bytes written over ~10 ms arrive after them, not after
        # one delay per chunk (that would be seconds).
        assert elapsed >= 2 * DELAY_S
        assert elapsed < 2 * DELAY_S + 1.0
        assert proxy.lateness.total > 0
    finally:
        await _close(server, proxy, writer)


async def test_a_large_transfer_is_not_held_to_a_chunk_per_delay() -> None:
    server, proxy, reader, writer = await _through_proxy()
    try:
        payload = bytes(range(256)) * 8 * 1024  # 2 MiB: many socket reads
        started = time.monotonic()

        async def send() -> None:
            writer.write(payload)
            await writer.drain()

        sender = asyncio.create_task(send())
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
        await sender
        assert got == payload
        assert time.monotonic() - started < 30
    finally:
        await _close(server, proxy, writer)


async def test_the_end_of_a_stream_is_forwarded_after_its_bytes() -> None:
    server, proxy, reader, writer = await _through_proxy()
    try:
        writer.write(b"last words")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"last words"
    finally:
        await _close(server, proxy, writer)


def test_lateness_quantiles_come_from_what_was_observed() -> None:
    lateness = Lateness()
    assert lateness.line() is None
    for _ in range(98):
        lateness.observe(0.1)
    lateness.observe(40.0)
    lateness.observe(40.0)
    assert lateness.quantile(0.5) == 0.25
    assert lateness.quantile(0.99) == 50
    line = lateness.line()
    assert line is not None and "flushes=100" in line and "max=40.00" in line
    assert lateness.line() is None  # nothing new since
