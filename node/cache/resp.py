"""A small Redis client for the event loop: the two commands of a cache lookup (GET, and the
lookup script) over one connection, pipelined, each reply matched to its call in order.

Why not redis.asyncio: a hit is one GET, and redis.asyncio spends about 55 us of CPU on it (a
connection taken from a pool under a lock, a retry wrapper, a parser in Python over a stream
reader); this client spends about 15 us, on the event loop that serves the Get. It speaks RESP2
over TCP or a unix socket (redis:// and unix:// URLs, with AUTH and SELECT from the URL); a
rediss:// (TLS) URL uses redis.asyncio (store.py).

Failure handling: every call has a deadline (one timer per connection serves them all); a call
that fails or times out drops the connection (its other calls fail too, and their reads fall
back), so a reply can never be matched to the wrong call. The next call connects again, under
the same deadline.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from typing import Any, cast

import redis
from redis.connection import parse_url

Reply = bytes | int | None


class _Connection(asyncio.Protocol):
    """One connection's calls, in the order sent, each with the loop time its deadline passes.

    The deadlines share one timer: it fires at the oldest call's deadline (fails it if it has
    not been answered; its caller then drops the connection) and is set again for the oldest
    call left, if any. A sequential stream of calls, each answered within its deadline, costs
    a read of the loop's clock per call, where a timer of its own would be set and cancelled
    every call (a timer handle and a heap push and removal, on the hit's path)."""

    def __init__(self, deadline_s: float) -> None:
        self._buffer = bytearray()
        self._waiting: collections.deque[tuple[asyncio.Future[Reply], float]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._deadline_s = deadline_s
        self._timer: asyncio.TimerHandle | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not derive from asyncio.Transport, so no isinstance).
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(redis.ConnectionError(f"the connection to the cache's Redis was lost ({exc or 'closed'})"))

    def _fail(self, error: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            waiter, _ = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def send(self, command: bytes) -> asyncio.Future[Reply]:
        """Writes `command`; its reply's future, failed with TimeoutError at its deadline."""
        if self.lost or self._transport is None:
            raise redis.ConnectionError("the connection to the cache's Redis is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply] = loop.create_future()
        self._transport.write(command)
        due = loop.time() + self._deadline_s
        self._waiting.append((waiter, due))
        if self._timer is None:
            self._timer = loop.call_at(due, self._expire)
        return waiter

    def _expire(self) -> None:
        """The deadline timer: fails every call past its deadline and not yet answered, and then
        drops the connection (its other calls fail with it), or else waits for the oldest call
        still within its own. Dropped here, not by each caller: a call sent ahead is then awaited
        as its bare future (SentGet.reply)."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired = False
        for waiter, due in self._waiting:  # callbacks of a failed future run later: no mutation
            if due > now:
                break
            if not waiter.done():
                waiter.set_exception(
                    TimeoutError(f"the cache's Redis did not answer within {self._deadline_s:.3f} s")
                )
                expired = True
        else:
            due = None
        if expired:
            self.close()
        elif due is not None:
            self._timer = loop.call_at(due, self._expire)

    def close(self) -> None:
        if self._transport is not None and not self.lost:
            self._transport.abort()  # connection_lost fails what is still waiting
        self.lost = True

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._waiting:
            try:
                parsed = _parse(self._buffer)
            except ValueError as exc:
                self._fail(redis.ConnectionError(f"the cache's Redis answered nonsense ({exc})"))
                self.close()
                return
            if parsed is None:
                return  # the rest of the reply has not come yet
            reply, end = parsed
            del self._buffer[:end]
            waiter, _ = self._waiting.popleft()
            if not waiter.done():  # not given up at its deadline
                if isinstance(reply, redis.ResponseError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        if self._buffer:
            self._fail(redis.ConnectionError("the cache's Redis answered what no call asked for"))
            self.close()


def _parse(buffer: bytearray) -> tuple[Reply | redis.ResponseError, int] | None:
    """One reply from the buffer's start and where it ends; None when it is not complete. Only
    the types the lookup's commands answer: bulk strings, simple strings, errors, integers."""
    line_end = buffer.find(b"\r\n")
    if line_end < 0:
        return None
    tag = buffer[:1]
    head = bytes(buffer[1:line_end])
    if tag == b"$":
        length = int(head)
        if length < 0:
            return None, line_end + 2
        end = line_end + 2 + length + 2
        if len(buffer) < end:
            return None
        return bytes(buffer[line_end + 2 : end - 2]), end
    if tag == b"+":
        return head, line_end + 2
    if tag == b"-":
        return redis.ResponseError(head.decode(errors="replace")), line_end + 2
    if tag == b":":
        return int(head), line_end + 2
    raise ValueError(f"reply type {bytes(tag)!r}")


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _get_command(key: bytes) -> bytes:
    """`_command(b"GET", key)` in one formatting step: a hit sends one."""
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)


class SentGet:
    """A GET already written to Redis whose reply is awaited later (`reply`) or never (`drop`):
    the lookup's round trip then overlaps whatever the caller does in between. Its deadline runs
    from the send, like a call's (`_Connection`)."""

    __slots__ = ("_waiter",)

    def __init__(self, waiter: asyncio.Future[Reply]) -> None:
        self._waiter = waiter

    def reply(self) -> asyncio.Future[Reply]:
        """The reply's future, to await: it fails at the deadline (TimeoutError) or with the
        connection, which is dropped by then either way (`_Connection`), as after any call
        that fails. A future, not a coroutine: a hit awaits one thing fewer."""
        return self._waiter

    def drop(self) -> None:
        """Gives the reply up (the connection reads it and throws it away, as after a deadline).
        Idempotent, and a no-op once the reply was taken."""
        waiter = self._waiter
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled():
            waiter.exception()  # retrieved: a failure nobody waits for is not logged as lost


class LoopRedis:
    """GET and EVALSHA (EVAL when the script is not loaded) under a deadline, on one event loop."""

    def __init__(self, url: str, *, deadline_s: float) -> None:
        settings: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._path: str | None = settings.get("path")
        self._host: str = settings.get("host", "localhost")
        self._port: int = int(settings.get("port", 6379))
        self.deadline_s = deadline_s
        setup = []
        password = settings.get("password")
        if password is not None:
            username = settings.get("username")
            credentials = [username, password] if username else [password]
            setup.append(_command(b"AUTH", *(str(c).encode() for c in credentials)))
        if int(settings.get("db", 0)):
            setup.append(_command(b"SELECT", str(int(settings["db"])).encode()))
        self._setup = setup
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def get(self, key: bytes) -> Reply:
        return await self._call(_get_command(key))

    def send_get(self, key: bytes) -> SentGet | None:
        """Writes a GET now and returns at once; None when there is no connection up (connecting
        takes a wait: the caller then calls `get` when it needs the reply)."""
        connection = self._connection
        if connection is None or connection.lost:
            return None
        try:
            waiter = connection.send(_get_command(key))
        except (OSError, redis.ConnectionError) as exc:
            # As a call that failed: the connection is dropped and the reply raises the failure.
            connection.close()
            waiter = asyncio.get_running_loop().create_future()
            waiter.set_exception(exc)
        return SentGet(waiter)

    async def run_script(self, script: bytes, keys: list[bytes], args: list[bytes]) -> Reply:
        sha = hashlib.sha1(script).hexdigest().encode()
        counts = str(len(keys)).encode()
        try:
            return await self._call(_command(b"EVALSHA", sha, counts, *keys, *args))
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._call(_command(b"EVAL", script, counts, *keys, *args))

    async def _call(self, command: bytes) -> Reply:
        connection = self._connection
        if connection is None or connection.lost:
            return await self._connect_and_call(command)
        # The usual case, a connection that is up: the connection fails the reply's future at its
        # deadline, which costs less per call than a timeout scope (no task to cancel and
        # uncancel) and ends the same way (the reply that comes later finds its future done and
        # is dropped).
        try:
            return await connection.send(command)
        except (TimeoutError, OSError, redis.ConnectionError):
            connection.close()
            raise

    async def _connect_and_call(self, command: bytes) -> Reply:
        """_call when there is no connection: connecting and the call share one deadline."""
        connection = None
        try:
            async with asyncio.timeout(self.deadline_s):
                connection = await self._connected()
                return await connection.send(command)
        except (TimeoutError, OSError, redis.ConnectionError):
            # A Redis that is slow or gone: start afresh on a new connection. (A call cancelled
            # by its caller leaves the connection as it is: its reply is read and dropped.)
            if connection is not None:
                connection.close()
            raise

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.lost:
            return connection
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        # Shielded: a caller that gives up does not cancel the connection others wait for.
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.deadline_s):
            if self._path is not None:
                _, connection = await loop.create_unix_connection(self._new_connection, self._path)
            else:
                _, connection = await loop.create_connection(self._new_connection, self._host, self._port)
            try:
                for command in self._setup:
                    reply = await connection.send(command)
                    if reply != b"OK":
                        raise redis.ConnectionError(f"the cache's Redis refused the setup: {reply!r:.80}")
            except BaseException:
                connection.close()
                raise
        self._connection = connection
        return connection

    def _new_connection(self) -> _Connection:
        return _Connection(self.deadline_s)

    async def aclose(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
