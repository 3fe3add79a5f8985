"""What CPU on a cache hit's path costs in latency, by where the hit spends it.

A cache hit (node/api/read_ahead.py) writes its Redis GET from the request's deserializer, does
the call's own work (the deadline, authentication, authorization, the request's checks) while
the GET is out, and decides and answers after the reply. Its floor, the echo server reading one
key from Redis before each answer (bench/echo_server.py --redis-url), does none of that work.
This run measures the echo server, the floor, and floors that also spin for a set number of
microseconds of CPU at one of the three points (--busy-us BEFORE,WHILE,AFTER), all in turn,
`--block` calls of a kind at a time, against one redis-server. Each floor's p50 and p99 are
printed against echo's, and each busy floor's added p50 per microsecond spun against the bare
floor's: how much of a microsecond of the node's Python at that point a client waits for.

Run as `python -m bench.hit_cost [--samples N] [--block N] [--busy B,W,A ...]`
(`make bench-hit-cost`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import redis

from bench import phases
from bench.client import channel, echo_call, interleaved_ms
from bench.cluster import ECHO_READY
from bench.echo_server import BusyWork
from bench.procs import Children
from bench.report import Figure, run_printed
from bench.stats import percentile
from domicile.identity.credentials import Dialer
from domicile.redis_server import RedisServer

FLOOR_KEY = "domicile-bench:hit-cost"
# About a cache entry's size for the bench's 256-byte values (a key state with one version).
ENTRY_BYTES = 420
VALUE = b"v" * 256
DEFAULT_BUSY = ("40,0,0", "0,40,0", "0,120,0", "0,0,40")
BLOCK_DEFAULT = 25


def busy_label(busy: BusyWork) -> str:
    parts = (
        (busy.before_send_us, "before the GET"),
        (busy.while_waiting_us, "while it is out"),
        (busy.after_reply_us, "after its reply"),
    )
    spent = [f"{us} us {where}" for us, where in parts if us]
    return "floor" if not spent else "floor + " + ", ".join(spent)


def figures(echo_ms: list[float], floors: dict[BusyWork, list[float]]) -> list[Figure]:
    """Each floor's p50 and p99 against echo's; each busy floor's added p50 per microsecond
    spun, against the bare floor (BusyWork()), which `floors` must hold."""
    echo_p50, echo_p99 = percentile(echo_ms, 0.5), percentile(echo_ms, 0.99)
    bare_p50 = percentile(floors[BusyWork()], 0.5)
    out: list[Figure] = []
    for busy, samples in floors.items():
        label = busy_label(busy)
        key = "hit_cost_" + str(busy).replace(",", "_")
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        out.append(Figure(f"{key}_p50", f"{label}: p50", p50, "ms", echo_p50, "echo p50 (in turn)"))
        out.append(Figure(f"{key}_p99", f"{label}: p99", p99, "ms", echo_p99, "echo p99 (in turn)"))
        spent_us = busy.before_send_us + busy.while_waiting_us + busy.after_reply_us
        if spent_us:
            added = (p50 - bare_p50) * 1000 / spent_us
            out.append(
                Figure(
                    f"{key}_p50_per_us", f"{label}: p50 added per us spun (against the floor)", added, "ratio"
                )
            )
    return out


async def run(samples: int, block: int, busy: list[BusyWork], seed: int, root: Path) -> list[Figure]:
    (root / "logs").mkdir()
    children = Children(root / "logs", cwd=root)
    server = RedisServer(root / "redis")
    dialer = Dialer.plaintext()
    try:
        await asyncio.to_thread(server.start)
        client = redis.Redis.from_url(server.url)
        try:
            client.set(FLOOR_KEY, b"e" * ENTRY_BYTES)
        finally:
            client.close()
        phases.progress(f"starting the echo server and {len(busy)} floors in {root}")
        addresses = {
            "echo": (await children.start_daemon("echo", ["-m", "bench.echo_server"], ECHO_READY))[1]
        }
        for work in busy:
            argv = ["-m", "bench.echo_server", "--redis-url", server.url, "--redis-key", FLOOR_KEY]
            match = await children.start_daemon(f"floor {work}", [*argv, "--busy-us", str(work)], ECHO_READY)
            addresses[str(work)] = match[1]
        async with AsyncExitStack() as stack:
            calls = []
            for name, address in addresses.items():
                ch = await stack.enter_async_context(channel(address, dialer))
                calls.append(echo_call(ch, "hit-cost", name, VALUE))
            phases.progress(
                f"echo and {len(busy)} floors in turn, {block} of a kind at a time: {samples} of each"
            )
            echo_ms, *floor_ms = await interleaved_ms(calls, samples, random.Random(seed), block=block)
        return figures(echo_ms, dict(zip(busy, floor_ms, strict=True)))
    finally:
        await children.stop_all()
        await asyncio.to_thread(server.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="What CPU at each point of a cache hit costs in latency.")
    parser.add_argument("--samples", type=int, default=4000, help="calls of each server (4000)")
    parser.add_argument(
        "--block", type=int, default=BLOCK_DEFAULT, help=f"calls of a kind at a time ({BLOCK_DEFAULT})"
    )
    parser.add_argument(
        "--busy",
        action="append",
        help="a busy floor's BEFORE,WHILE,AFTER microseconds; repeatable "
        f"(default: {' '.join(DEFAULT_BUSY)}); the bare floor is always measured",
    )
    parser.add_argument("--seed", type=int, help="seed of the call order (random by default)")
    a = parser.parse_args(argv)
    if not 1 <= a.samples <= 1_000_000 or not 1 <= a.block <= a.samples:
        parser.error("--samples must be 1 to 1000000 and --block 1 to --samples")
    try:
        busy = [BusyWork(), *(BusyWork.parse(b) for b in (a.busy or DEFAULT_BUSY))]
    except ValueError as exc:
        parser.error(str(exc))
    if len(set(busy)) != len(busy):
        parser.error("each --busy must differ from the others and from 0,0,0 (the bare floor)")
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 32)
    samples, block = a.samples, a.block
    return run_printed("domicile-bench-hit-cost-", lambda root: run(samples, block, busy, seed, root), seed)


if __name__ == "__main__":
    sys.exit(main())
