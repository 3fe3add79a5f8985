"""The cache's client on the event loop (node/cache/resp.py) against a real redis-server: GET and
the lookup script, AUTH and SELECT from the URL, a unix socket, a deadline on a paused server,
a caller that gives up, and a server that goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis as redis_py
import uvloop

from domicile.ports import free_port
from domicile.redis_server import RedisServer
from node.cache.resp import LoopRedis
from node.cache.store import FillOutcome, Found, RedisStore
from tests.support.cluster import eventually
from tests.support.redis import paused
from tests.support.tls import session_pki

SCRIPT = b"return redis.call('GET', KEYS[1]) or ARGV[1]"


async def test_get_and_a_script_even_after_the_scripts_are_flushed(redis: RedisServer) -> None:
    sync = redis_client(redis)
    client = LoopRedis(redis.url, deadline_s=1.0)
    try:
        sync.set(b"k", b"\x00value\r\n")
        assert await client.get(b"k") == b"\x00value\r\n"
        assert await client.get(b"missing") is None
        big = bytes(range(256)) * 1000  # arrives in several reads
        sync.set(b"big", big)
        assert await client.get(b"big") == big
        assert await client.run_script(SCRIPT, [b"missing"], [b"fallback"]) == b"fallback"
        sync.script_flush()
        assert await client.run_script(SCRIPT, [b"k"], [b"x"]) == b"\x00value\r\n"
        # Many calls in flight on one connection get their own replies.
        keys = [f"n{i}".encode() for i in range(200)]
        for i, key in enumerate(keys):
            sync.set(key, str(i).encode())
        assert await asyncio.gather(*(client.get(k) for k in keys)) == [str(i).encode() for i in range(200)]
        with pytest.raises(redis_py.ResponseError, match="ERR"):
            await client.run_script(b"return redis.error_reply('ERR no')", [], [])
        assert await client.get(b"k") == b"\x00value\r\n"  # an error answer leaves it usable
    finally:
        await client.aclose()
        sync.close()


async def test_password_database_and_unix_socket_come_from_the_url(tmp_path: Path) -> None:
    socket = tmp_path / "redis.sock"
    extra = ("--unixsocket", str(socket), "--unixsocketperm", "700")
    with RedisServer(tmp_path / "redis", extra_args=extra) as server:
        sync = redis_py.Redis(host=server.host, port=server.port, db=3)
        sync.set(b"k", b"in db 3")
        sync.config_set("requirepass", "s3cret")  # after start: the start waits for a PING
        for url in (
            f"redis://:s3cret@{server.host}:{server.port}/3",
            f"redis://default:s3cret@{server.host}:{server.port}/3",
            f"unix://:s3cret@{socket}?db=3",
        ):
            client = LoopRedis(url, deadline_s=1.0)
            try:
                assert await client.get(b"k") == b"in db 3", url
            finally:
                await client.aclose()
        wrong = LoopRedis(f"redis://:wrong@{server.host}:{server.port}/3", deadline_s=1.0)
        try:
            with pytest.raises(redis_py.RedisError):
                await wrong.get(b"k")
        finally:
            await wrong.aclose()
        sync.close()


async def test_a_paused_server_times_out_at_the_deadline_and_the_next_call_reconnects(
    redis: RedisServer,
) -> None:
    async with seeded_client(redis, {b"k": b"v"}, 0.2) as client:
        assert await client.get(b"k") == b"v"
        loop = asyncio.get_running_loop()
        with paused(redis):
            started = loop.time()
            with pytest.raises(TimeoutError):
                await client.get(b"k")
            assert loop.time() - started < 2.0
        assert await client.get(b"k") == b"v"


async def test_a_reply_after_its_deadline_is_never_taken_for_a_later_call(redis: RedisServer) -> None:
    # A call on an open connection times out while the server is paused; the server then
    # answers it. That late reply must not be matched to the next call, for another key.
    async with seeded_client(redis, {b"a": b"A", b"b": b"B"}, 0.2) as client:
        assert await client.get(b"a") == b"A"  # the connection is open
        with paused(redis), pytest.raises(TimeoutError, match="did not answer within"):
            await client.get(b"a")
        assert await client.get(b"b") == b"B"


async def test_a_caller_that_gives_up_leaves_the_others_their_replies(redis: RedisServer) -> None:
    async with seeded_client(redis, {b"a": b"A", b"b": b"B"}, 1.0) as client:
        await client.get(b"a")
        first = asyncio.create_task(client.get(b"a"))
        second = asyncio.create_task(client.get(b"b"))
        await asyncio.sleep(0)  # both sent
        first.cancel()
        assert await second == b"B"
        assert await client.get(b"a") == b"A"


async def test_a_server_that_goes_away_fails_the_call_and_one_that_returns_is_used_again(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    port = server.port
    client = LoopRedis(server.url, deadline_s=1.0)
    try:
        redis_client(server).set(b"k", b"v")
        assert await client.get(b"k") == b"v"
        server.stop()
        with pytest.raises((redis_py.ConnectionError, OSError)):
            await client.get(b"k")
        server = RedisServer(tmp_path / "redis2", port=port).start()
        redis_client(server).set(b"k", b"again")
        assert await client.get(b"k") == b"again"
    finally:
        await client.aclose()
        server.stop()


def redis_client(server: RedisServer) -> redis_py.Redis:
    return redis_py.Redis.from_url(server.url)


@contextlib.asynccontextmanager
async def seeded_client(
    server: RedisServer, values: dict[bytes, bytes], deadline_s: float
) -> AsyncIterator[LoopRedis]:
    """A loop client of `server`, once `values` are set there; closed after."""
    sync = redis_client(server)
    try:
        for key, value in values.items():
            sync.set(key, value)
    finally:
        sync.close()
    client = LoopRedis(server.url, deadline_s=deadline_s)
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_tls_url_looks_up_over_tls(tmp_path: Path) -> None:
    """rediss:// lookups go through redis.asyncio with the URL's TLS settings."""
    files = session_pki().node("eu-west-1", "tls-redis")
    tls_port = free_port()
    extra = (
        "--tls-port", str(tls_port), "--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key),
        "--tls-ca-cert-file", str(files.ca), "--tls-auth-clients", "no",
    )  # fmt: skip
    with RedisServer(tmp_path / "redis", extra_args=extra) as server:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={files.ca}"
        store = RedisStore(url, node_id="n1", deadline_s=1.0, ttl_s=30)
        try:
            store.invalidate("g1", [], 1)  # sets hw: a miss leaves a lease
            missed = await store.lookup("g1", "ns", "k")
            assert not missed.hit and missed.lease
            assert store.fill("g1", "ns", "k", 1, b"state") is FillOutcome.FILLED
            assert await store.lookup("g1", "ns", "k") == Found(hit=True, state=b"state")
            plain = redis_client(server)
            assert plain.get(store.entry_key("g1", "ns", "k")) == b"fstate"
            plain.close()
        finally:
            await store.close_loop_client()
            store.close()


def test_on_uvloop_as_the_node_runs(redis: RedisServer) -> None:
    """The node's loop is uvloop, whose transports are not asyncio's classes."""
    sync = redis_client(redis)
    sync.set(b"k", b"v")

    async def calls() -> list[object]:
        client = LoopRedis(redis.url, deadline_s=1.0)
        try:
            return [await client.get(b"k"), await client.run_script(SCRIPT, [b"none"], [b"x"])]
        finally:
            await client.aclose()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            assert runner.run(calls()) == [b"v", b"x"]
    finally:
        sync.close()


async def test_a_get_sent_ahead_is_answered_later_and_one_dropped_is_never_seen(redis: RedisServer) -> None:
    async with seeded_client(redis, {b"a": b"A", b"b": b"B"}, 1.0) as client:
        assert client.send_get(b"a") is None  # no connection yet: sending would wait for one
        assert await client.get(b"a") == b"A"
        ahead = client.send_get(b"a")
        assert ahead is not None
        assert await client.get(b"b") == b"B"  # calls in between get their own replies
        assert await ahead.reply() == b"A"
        ahead.drop()  # after its reply: nothing happens
        dropped = client.send_get(b"a")
        assert dropped is not None
        dropped.drop()
        dropped.drop()
        # The dropped reply arrives and is thrown away, not taken for the next call's.
        assert await client.get(b"b") == b"B"
        assert await asyncio.gather(*(client.get(k) for k in (b"a", b"b"))) == [b"A", b"B"]


async def test_a_get_sent_ahead_keeps_its_deadline_and_the_next_call_reconnects(redis: RedisServer) -> None:
    async with seeded_client(redis, {b"k": b"v"}, 0.2) as client:
        assert await client.get(b"k") == b"v"
        loop = asyncio.get_running_loop()
        with paused(redis):
            ahead = client.send_get(b"k")
            assert ahead is not None
            started = loop.time()
            with pytest.raises(TimeoutError, match="did not answer within"):
                await ahead.reply()
            assert loop.time() - started < 2.0
        assert await client.get(b"k") == b"v"


async def test_a_deadline_that_passes_drops_the_connection_before_anyone_awaits(
    redis: RedisServer,
) -> None:
    """The connection drops itself when a call's deadline passes, so that a GET sent ahead can
    be awaited as its bare future: the calls sent after it fail with it, and are never matched
    to the late replies."""
    async with seeded_client(redis, {b"k": b"v"}, 0.2) as client:
        assert await client.get(b"k") == b"v"
        with paused(redis):
            ahead = client.send_get(b"k")
            behind = client.send_get(b"k")
            assert ahead is not None and behind is not None
            await asyncio.sleep(0.4)  # past the deadline, with nobody awaiting either reply
            assert client.send_get(b"k") is None  # the connection is gone
            with pytest.raises(TimeoutError, match="did not answer within"):
                await ahead.reply()
            with pytest.raises((TimeoutError, redis_py.ConnectionError)):
                await behind.reply()
        assert await client.get(b"k") == b"v"  # a new connection


async def test_no_get_is_sent_ahead_on_a_connection_that_was_lost(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = LoopRedis(server.url, deadline_s=1.0)
    try:
        redis_client(server).set(b"k", b"v")
        assert await client.get(b"k") == b"v"
        server.stop()

        async def lost() -> bool:
            sent = client.send_get(b"k")
            if sent is not None:
                sent.drop()
            return sent is None

        await eventually(lost, 5.0, "the lost connection noticed")
        with pytest.raises((redis_py.ConnectionError, OSError)):
            await client.get(b"k")  # the call that needs the reply connects, and fails
    finally:
        await client.aclose()
        server.stop()


async def test_a_call_after_an_answered_one_times_out_at_its_own_deadline_not_the_first_calls(
    redis: RedisServer,
) -> None:
    # The connection's calls share one deadline timer, set at the first call's deadline: when it
    # fires with that call answered, a later call must be given the rest of its own deadline.
    deadline_s = 0.4
    async with seeded_client(redis, {b"k": b"v"}, deadline_s) as client:
        assert await client.get(b"k") == b"v"  # connected; its timer may still be set
        loop = asyncio.get_running_loop()
        assert await client.get(b"k") == b"v"  # sets the timer if the connect's call did not
        await asyncio.sleep(deadline_s / 2)
        with paused(redis):
            started = loop.time()
            with pytest.raises(TimeoutError, match="did not answer within"):
                await client.get(b"k")
            waited = loop.time() - started
        assert deadline_s * 0.9 <= waited < 2.0, f"timed out after {waited:.3f} s"
        assert await client.get(b"k") == b"v"
