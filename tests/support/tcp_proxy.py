"""A TCP proxy under the test's control: the kernel here has no netem, so partitions and
latency are emulated in user space between two processes or two in-process nodes."""

from __future__ import annotations

import asyncio
import contextlib


class _Exchange:
    """One proxied connection: whether a request whose answer is to be lost went through it."""

    __slots__ = ("losing",)

    def __init__(self) -> None:
        self.losing = False


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target`. `partition()` cuts every connection and refuses
    new ones until `heal()`; `delay_s` delays each chunk in each direction (one-way delay);
    `lose_answer_to(marker)` lets the next request holding `marker` through and partitions
    when the target answers it, the answer dropped (the client never learns the outcome)."""

    def __init__(self, target: str, *, delay_s: float = 0.0) -> None:
        self.target_host, _, port = target.rpartition(":")
        self.target_port = int(port)
        self.delay_s = delay_s
        self.partitioned = False
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""
        self._lose_marker: bytes | None = None
        # Answers dropped by lose_answer_to.
        self.answers_lost = 0

    def retarget(self, target: str) -> None:
        self.target_host, _, port = target.rpartition(":")
        self.target_port = int(port)

    async def start(self, port: int = 0) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        bound = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{bound}"
        return self.address

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.partitioned:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))
        exchange = _Exchange()
        for src, dst, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pipe(src, dst, exchange, upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def lose_answer_to(self, marker: bytes) -> None:
        self._lose_marker = marker

    def _loses(self, chunk: bytes, exchange: _Exchange, upstream: bool) -> bool:
        """Whether this chunk is the answer to lose (then the proxy is partitioned)."""
        if upstream:
            if self._lose_marker is not None and self._lose_marker in chunk:
                self._lose_marker = None
                exchange.losing = True
            return False
        if not exchange.losing:
            return False
        # The target answered: it has done what was asked, and nobody will hear it.
        self.answers_lost += 1
        self.partition()
        return True

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, exchange: _Exchange, upstream: bool
    ) -> None:
        # Reading and writing are decoupled by a queue of (due time, chunk), so a delay shifts
        # every byte by delay_s without limiting throughput (a link with latency, not a slow one).
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer_task = asyncio.create_task(self._drain(queue, dst))
        try:
            while not self.partitioned:
                chunk = await src.read(65536)
                if not chunk or self._loses(chunk, exchange, upstream):
                    break
                queue.put_nowait((loop.time() + self.delay_s, chunk))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(Exception):
                await writer_task

    async def _drain(self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, chunk = await queue.get()
                if not chunk or self.partitioned:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(chunk)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            self._conns.discard(dst)
            with contextlib.suppress(Exception):
                dst.close()

    def partition(self) -> None:
        self.partitioned = True
        for writer in list(self._conns):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._conns.clear()

    def heal(self) -> None:
        self.partitioned = False

    async def stop(self) -> None:
        self.partition()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
