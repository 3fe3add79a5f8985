"""A TCP proxy with a one-way delay in each direction, in its own process, put in front of a
node to emulate a distant region (the kernel here has no netem).

Run as `python -m bench.delay_proxy --target HOST:PORT --delay-ms 50`; it prints
`proxy listening on HOST:PORT` when ready, then, every second in which it forwarded something,
`proxy lateness ms: ...`: how much later than its due time (arrival + delay) the proxy wrote
bytes, cumulative since start. That is what the proxy itself adds to the delay, so a figure
measured through it can be read against it.

The proxy must add the delay and nothing else. Each direction keeps its chunks in arrival order
with their due times and asks for one wake-up at the earliest: then every chunk already due is
written in one go (no timer, task or drain per chunk), so a busy link costs the proxy a wake-up
per due time, not per chunk. Arrivals and due times are read from the monotonic clock, and the
wake-ups come from a timerfd (`bench.wakeups`), not from the loop's timers, which fire up to a
millisecond late. It runs on uvloop when installed, like the nodes. Reading pauses while the
other side's socket buffer is full (flow control, as a slow link would), never to space chunks
out.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import time
from typing import cast

from bench.stopping import stop_on_signals
from bench.wakeups import Wakeups

DELAY_MS_MAX = 10_000
# Lateness histogram buckets (ms): fine below a few ms, where a healthy proxy stays.
LATENESS_BUCKETS_MS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000)
REPORT_EVERY_S = 1.0


class Lateness:
    """How late, past its due time, each flush wrote its oldest chunk (ms)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENESS_BUCKETS_MS) + 1)
        self.total = 0
        self.max_ms = 0.0
        self._reported = 0

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(LATENESS_BUCKETS_MS, ms)] += 1
        self.total += 1
        self.max_ms = max(self.max_ms, ms)

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding quantile q (an upper estimate)."""
        rank = q * self.total
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return LATENESS_BUCKETS_MS[i] if i < len(LATENESS_BUCKETS_MS) else self.max_ms
        return 0.0

    def line(self) -> str | None:
        """The report line, when something was written since the last one."""
        if self.total == self._reported:
            return None
        self._reported = self.total
        return (
            f"proxy lateness ms: flushes={self.total} p50<={self.quantile(0.5):g} "
            f"p99<={self.quantile(0.99):g} max={self.max_ms:.2f}"
        )


class _Direction(asyncio.Protocol):
    """One direction of a proxied connection: what its transport receives is written to `peer`
    `delay_s` later."""

    def __init__(self, delay_s: float, lateness: Lateness, wakeups: Wakeups) -> None:
        self.delay_s = delay_s
        self.lateness = lateness
        self.transport: asyncio.Transport | None = None
        self.peer: _Direction | None = None
        self._pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self._wakeups = wakeups
        self._wakeup_asked = False
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, hence no check).
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        # Due times grow with arrival, so the deque stays in due order.
        self._pending.append((time.monotonic() + self.delay_s, data))
        self.reschedule()

    def eof_received(self) -> bool | None:
        self._pending.append((time.monotonic() + self.delay_s, b""))
        self.reschedule()
        return True  # keep our side open until the EOF is forwarded

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True  # a wake-up already asked for finds nothing to do
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def _flush(self) -> None:
        self._wakeup_asked = False
        peer = self.peer.transport if self.peer is not None else None
        if self._closing or peer is None or peer.is_closing():
            return
        now = time.monotonic()
        pending = self._pending
        if pending:
            self.lateness.observe(max(0.0, now - pending[0][0]) * 1000.0)
        out: list[bytes] = []
        eof = False
        while pending and pending[0][0] <= now:
            _, chunk = pending.popleft()
            if not chunk:
                eof = True
                break
            out.append(chunk)
        if out:
            peer.write(b"".join(out))
        if eof:
            if peer.can_write_eof():
                peer.write_eof()
            else:
                peer.close()
            return
        self.reschedule()

    def reschedule(self) -> None:
        if self._pending and not self._wakeup_asked:
            self._wakeup_asked = True
            self._wakeups.at(self._pending[0][0], self._flush)

    # Flow control: the peer's socket buffer is full, so stop reading what would go there.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class DelayProxy:
    def __init__(self, target: str, delay_s: float) -> None:
        self.target_host, _, port = target.rpartition(":")
        self.target_port = int(port)
        self.delay_s = delay_s
        self.lateness = Lateness()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._wakeups: Wakeups | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._wakeups = Wakeups(loop)
        self._server = await loop.create_server(self._client_side, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    @property
    def precise(self) -> bool:
        """Whether the wake-ups come from the kernel's timerfd (else the loop's timers)."""
        return self._wakeups is not None and self._wakeups.precise

    def _client_side(self) -> asyncio.Protocol:
        assert self._wakeups is not None, "start() first"
        wakeups = self._wakeups
        client = _Direction(self.delay_s, self.lateness, wakeups)
        loop = asyncio.get_running_loop()

        async def connect() -> None:
            upstream = _Direction(self.delay_s, self.lateness, wakeups)
            try:
                await loop.create_connection(lambda: upstream, self.target_host, self.target_port)
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            client.peer, upstream.peer = upstream, client
            for side in (client, upstream):
                if side.transport is not None:
                    self._transports.add(side.transport)
            # What either side received before both were joined goes out on its schedule.
            for side in (client, upstream):
                side.reschedule()

        self._connecting.add(task := loop.create_task(connect()))
        task.add_done_callback(self._connecting.discard)
        return client

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in self._transports:
            with contextlib.suppress(Exception):
                transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self._wakeups is not None:
            self._wakeups.close()


async def serve(target: str, delay_ms: float) -> None:
    proxy = DelayProxy(target, delay_ms / 1000.0)
    address = await proxy.start()
    print(f"proxy listening on {address}", flush=True)
    wakeups = "a timerfd" if proxy.precise else "the event loop's timers (1 ms resolution)"
    print(f"proxy wake-ups from {wakeups}", flush=True)
    stop = stop_on_signals()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REPORT_EVERY_S)
        line = proxy.lateness.line()
        if line is not None:
            print(f"{line} at={time.time():.3f}", flush=True)
    await proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="TCP proxy with a one-way delay (benchmark).")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="delay in each direction")
    args = parser.parse_args()
    if not 0 <= args.delay_ms <= DELAY_MS_MAX:
        parser.error(f"--delay-ms must be 0 to {DELAY_MS_MAX}")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.target, args.delay_ms))
    else:
        uvloop.run(serve(args.target, args.delay_ms))


if __name__ == "__main__":
    main()
