"""The torture run's network: an HTTP CONNECT proxy that every connection of the cluster goes
through, so that the run can cut, slow and disturb each directed link on its own.

The kernel here has no netem, so faults are made in user space. Each process that dials (a node,
the coordinator, a client of the workload) gets a listening port of its own on the router:
daemons find it in their `grpc_proxy` environment variable, which gRPC honours for every channel
it opens, and the workload's channels name it with the `grpc.http_proxy` option. The router
therefore knows the source of every connection from the port it arrived on, and the destination
from the CONNECT line, and applies the rules of that directed link to the bytes flowing each way.

Faults act on bytes, not on connections, because that is what a real network does to TCP:
- a cut direction holds its bytes until it heals (a black hole: the endpoints' deadlines and
  keepalives notice, exactly as with a dropped route), and since nothing is dropped, a stream
  that survives the cut carries on intact afterwards;
- a delay shifts every byte of that direction by the same time (latency, not bandwidth);
- loss shows up in TCP as retransmission delay, so a lost chunk arrives one retransmission
  timeout late, and later chunks queue behind it in order;
- a reset aborts every connection between two endpoints (a crashed middlebox, or RST injection).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

# What a lost segment costs on Linux: the minimum retransmission timeout.
RETRANSMIT_S = 0.2
CHUNK_BYTES = 65536
# Chunks buffered per direction before the router stops reading (backpressure to the sender, as
# a full receive window would), so a long cut costs bounded memory.
QUEUE_CHUNKS = 64
CUT_POLL_S = 0.01
CONNECT_LINE_BYTES_MAX = 4096

Link = tuple[str, str]  # (from, to): the direction bytes travel


@dataclass
class LinkRules:
    cut: set[Link] = field(default_factory=set)
    delay_s: dict[Link, float] = field(default_factory=dict)
    loss: dict[Link, float] = field(default_factory=dict)  # probability that a chunk is "lost"

    def clear(self) -> None:
        self.cut.clear()
        self.delay_s.clear()
        self.loss.clear()


@dataclass(eq=False)  # compared by identity: each is one live connection
class _Connection:
    source: str
    destination: str
    writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter]

    def abort(self) -> None:
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()


class FaultRouter:
    """`listen(source)` gives a source its proxy port; `name(address, destination)` names what
    listens at an address. Everything else is the rules (`rules`) and `reset(a, b)`."""

    def __init__(self, seed: int) -> None:
        self.rules = LinkRules()
        self._random = random.Random(seed)
        self._names: dict[str, str] = {}
        self._servers: dict[str, asyncio.Server] = {}
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections_total = 0

    def name(self, address: str, destination: str) -> None:
        self._names[address] = destination

    async def listen(self, source: str) -> str:
        """The proxy URL for `source` (http://127.0.0.1:PORT)."""
        if source not in self._servers:

            async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await self._accept(source, reader, writer)

            self._servers[source] = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = self._servers[source].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def reset(self, a: str, b: str) -> int:
        """Aborts every connection between a and b, either way; returns how many."""
        hit = [c for c in self._connections if {c.source, c.destination} == {a, b}]
        for connection in hit:
            connection.abort()
        return len(hit)

    def heal(self) -> None:
        self.rules.clear()

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        for connection in list(self._connections):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _accept(self, source: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target = await _read_connect(reader)
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            with contextlib.suppress(Exception):
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        destination = self._names.get(target, target)
        connection = _Connection(source, destination, (writer, up_writer))
        self._connections.add(connection)
        self.connections_total += 1
        pipes = (
            self._pipe(reader, up_writer, (source, destination)),
            self._pipe(up_reader, writer, (destination, source)),
        )
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._connections.discard(connection)
            connection.abort()
            if task is not None:
                self._tasks.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: Link) -> None:
        # Reading and writing are decoupled by a queue of (due time, chunk), so a delay shifts
        # bytes without limiting throughput, and order is kept: a chunk is never due before the
        # one ahead of it.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        drain = asyncio.create_task(self._drain(queue, dst, link))
        last_due = 0.0
        try:
            while True:
                chunk = await src.read(CHUNK_BYTES)
                if not chunk:
                    break
                due = loop.time() + self.rules.delay_s.get(link, 0.0)
                if self._random.random() < self.rules.loss.get(link, 0.0):
                    due += RETRANSMIT_S
                last_due = max(due, last_due)
                await queue.put((last_due, chunk))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await queue.put((0.0, b""))
            with contextlib.suppress(Exception):
                await drain

    async def _drain(
        self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter, link: Link
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                # Polled: the rules are plain data that the nemesis edits, and a cut lasts
                # seconds, so 10 ms of polling per held direction costs nothing.
                while link in self.rules.cut:  # noqa: ASYNC110
                    await asyncio.sleep(CUT_POLL_S)
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(chunk)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()


async def _read_connect(reader: asyncio.StreamReader) -> str:
    """The HOST:PORT of a CONNECT request; the rest of its header is skipped."""
    line = await reader.readuntil(b"\r\n")
    if len(line) > CONNECT_LINE_BYTES_MAX:
        raise ValueError("CONNECT line too long")
    parts = line.decode("ascii", "replace").split()
    if len(parts) != 3 or parts[0] != "CONNECT":
        raise ValueError(f"not a CONNECT request: {line[:80]!r}")
    while (await reader.readuntil(b"\r\n")) != b"\r\n":
        pass
    return parts[1]


def cut_between(
    rules: LinkRules, side_a: Iterable[str], side_b: Iterable[str], *, both_ways: bool = True
) -> None:
    """Cuts every link from side_a to side_b (and back, unless one-way)."""
    b = list(side_b)
    for x in side_a:
        for y in b:
            rules.cut.add((x, y))
            if both_ways:
                rules.cut.add((y, x))
