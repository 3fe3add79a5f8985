"""Only the cache-hit figures of `make bench`, in a run of a minute or two: a node with the read
cache on the SQLite engine, then one on the MongoDB engine (whose cache also follows the
database's change stream), each measured by `cache_phase.measure_hits` against echo calls made
in turn with the Gets. Beside each p99: the node's CPU per Get against the echo server's CPU per
call (a figure a busy machine moves less than a p99), and what the machine took meanwhile (the
CPU time stolen by the hypervisor, the time some task waited for a CPU: bench.machine).
`--rounds N` measures each N times in one run, so that the spread a shared machine adds shows
beside the figures.

Redis is reached over loopback TCP, as a Redis on another host of the region would be. A third
node (SQLite engine) reaches the same redis-server over a unix socket, the deployment of a Redis
on the node's own host; its figures are labelled so and never stand in for the TCP ones.

Every node here is plaintext, as the echo server is, and so is the coordinator: a plaintext node
speaks plaintext to its coordinator, and against a mutual-TLS one it would retry its link all
through the run, background work a deployed node does not do.

Run as `python -m bench.cache_hits [--samples N] [--rounds N] [--seed N]` (`make bench-cache`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import cache_phase, phases
from bench.client import channel
from bench.cluster import ECHO_READY, SOLO_NAMESPACE, SOLO_REGION, BenchCluster
from bench.main import (
    CACHE_HIT_P99_RATIO_MAX,
    CACHED_MONGO_NODE_ID,
    CACHED_NODE_ID,
    MONGO_HIT_KEYS,
    p50_p99,
)
from bench.procs import Children
from bench.report import Figure, run_printed
from domicile.ports import free_port
from domicile.redis_server import RedisServer

# The key the floor servers read (bench/echo_server.py --redis-key): a copy of a hit's entry.
FLOOR_KEY = "domicile-bench:floor"


@dataclass(frozen=True)
class Setup:
    engine: str
    node_id: str
    # The figures' name part and what their label says of the setup.
    name: str
    label: str
    unix_socket: bool = False


SETUPS = (
    Setup("SQLite", CACHED_NODE_ID, "sqlite", "SQLite engine"),
    Setup("SQLite", f"{CACHED_NODE_ID}-unix", "sqlite_unix", "SQLite engine, Redis on a unix socket",
          unix_socket=True),
    Setup("MongoDB", CACHED_MONGO_NODE_ID, "mongodb", "MongoDB engine"),
)  # fmt: skip


def copy_entry(url: str, node_id: str, key: str) -> None:
    """Stores the node's cache entry of `key` under FLOOR_KEY: the floor server reads the very
    bytes a hit of that key reads. The pattern follows RedisStore.entry_key (node/cache/store.py)
    for any generation; a layout it no longer matches finds nothing and fails here. Blocks."""
    client = redis.Redis.from_url(url)
    try:
        pattern = f"domicile:{node_id}:*:e:{SOLO_NAMESPACE}:{key}"
        found = next(iter(client.scan_iter(match=pattern, count=1000)), None)
        entry = client.get(found) if found is not None else None
        if entry is None:
            raise RuntimeError(f"the node's cache holds no entry of {key!r} ({pattern}); the floor needs one")
        client.set(FLOOR_KEY, entry)
    finally:
        client.close()


def hit_figures(setup: Setup, round_no: int, hit: cache_phase.HitResult) -> list[Figure]:
    echo50, echo99 = p50_p99(hit.echo_ms)
    hit50, hit99 = p50_p99(hit.hit_ms)
    label = f"Get, a Redis hit ({setup.label}, round {round_no})"
    name = setup.name
    return [
        # Beside the p99's ratio, the p50's: on a quiet machine the first follows the second.
        Figure(f"cache_hit_{name}_p50_ms_{round_no}", f"{label} p50", hit50, "ms", echo50,
               "echo p50 (in turn)"),
        Figure(
            f"cache_hit_{name}_p99_ms_{round_no}",
            f"{label} p99",
            hit99,
            "ms",
            echo99,
            "echo p99 (in turn)",
            f"<= {CACHE_HIT_P99_RATIO_MAX} x echo p99",
            hit99 <= CACHE_HIT_P99_RATIO_MAX * echo99,
        ),
        Figure(f"cache_hit_{name}_share_{round_no}", f"{label}: share answered by the cache",
               hit.hit_share, "ratio"),
        Figure(f"cache_hit_{name}_cpu_us_{round_no}", f"{label}: node CPU per Get",
               hit.hit_cpu_us, "us", hit.echo_cpu_us, "echo server CPU per call"),
        *floor_figures(f"cache_hit_{name}_{round_no}", label, hit),
        *machine_figures(f"cache_hit_{name}_{round_no}", label, hit),
    ]  # fmt: skip


def floor_figures(name: str, label: str, hit: cache_phase.HitResult) -> list[Figure]:
    """The floor of a hit against echo (what a hit's Redis round trip alone costs a bare
    server), and the hit against its floor (what the node's read path adds to that)."""
    if hit.floor_ms is None:
        return []
    echo50, echo99 = p50_p99(hit.echo_ms)
    floor50, floor99 = p50_p99(hit.floor_ms)
    _, hit99 = p50_p99(hit.hit_ms)
    floor = f"{label}: floor (echo server + one Redis GET, in turn)"
    return [
        Figure(f"{name}_floor_p50_ms", f"{floor} p50", floor50, "ms", echo50, "echo p50 (in turn)"),
        Figure(f"{name}_floor_p99_ms", f"{floor} p99", floor99, "ms", echo99, "echo p99 (in turn)"),
        Figure(f"{name}_floor_cpu_us", f"{floor}: CPU per call", hit.floor_cpu_us, "us",
               hit.echo_cpu_us, "echo server CPU per call"),
        Figure(f"{name}_over_floor_p99_ms", f"{label} p99 against its floor", hit99, "ms", floor99,
               "floor p99 (in turn)"),
    ]  # fmt: skip


def machine_figures(name: str, label: str, hit: cache_phase.HitResult) -> list[Figure]:
    """What the machine took while the Gets and echo calls ran (bench.machine): a round whose
    p99s were read while other guests took much of the CPU says more of the machine than of the
    code."""
    share = hit.machine_share
    if share is None:
        return []
    return [
        Figure(f"{name}_{key}_pct", f"{label}: {what}", None if value is None else 100 * value, "%")
        for key, what, value in (
            ("steal", "CPU time stolen by the hypervisor", share.steal),
            ("pressure", "time some task waited for a CPU", share.pressure),
        )
    ]


async def run(
    samples: int, rounds: int, seed: int, root: Path, block: int = cache_phase.HIT_BLOCK
) -> list[Figure]:
    (root / "logs").mkdir()
    children = Children(root / "logs", cwd=root)
    cluster = BenchCluster(root, children)
    socket_path = root / "redis.sock"
    unix_args = ("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    redis = RedisServer(root / "redis", extra_args=unix_args)
    value = b"v" * 256
    figures: list[Figure] = []
    try:
        mongo_port = free_port()
        phases.progress(f"starting coordinator, echo server, SecantusDB and redis-server in {root}")
        await asyncio.gather(
            cluster.start_coordinator(plaintext=True),
            children.start_listening(
                "mongodb",
                ["-m", "secantus", "--host", "127.0.0.1", "--port", str(mongo_port),
                 "--storage-path", str(root / "mongodb"), "--log-level", "WARNING", "--sync-on-commit"],
                mongo_port,
            ),
            asyncio.to_thread(redis.start),
        )  # fmt: skip
        echo = await children.start_daemon("echo", ["-m", "bench.echo_server"], ECHO_READY)
        floors = {
            unix: await children.start_daemon(
                process, ["-m", "bench.echo_server", "--redis-url", url, "--redis-key", FLOOR_KEY], ECHO_READY
            )
            for unix, process, url in (
                (False, "floor", redis.url),
                (True, "floor-unix", f"unix://{socket_path}"),
            )
        }
        for setup in SETUPS:
            url = f"unix://{socket_path}" if setup.unix_socket else redis.url
            cache_args = ("--cache-redis-url", url, "--cache-redis-region", SOLO_REGION)
            mongo_uri = f"mongodb://127.0.0.1:{mongo_port}/"
            mongodb = (mongo_uri, "bench_cache") if setup.engine == "MongoDB" else None
            # Plaintext, as the echo server is: the figure prices the node's work, not TLS
            # (`make bench` prices mutual TLS against plaintext on its own).
            node = await cluster.start_node(
                SOLO_REGION, node_id=setup.node_id, mongodb=mongodb, plaintext=True, extra_args=cache_args
            )
            floor_process = "floor-unix" if setup.unix_socket else "floor"
            try:
                async with (
                    channel(echo.group(1), cluster.plain_dialer) as echo_channel,
                    channel(floors[setup.unix_socket].group(1), cluster.plain_dialer) as floor_channel,
                ):
                    floor = cache_phase.Floor(
                        floor_channel, functools.partial(copy_entry, redis.url, setup.node_id), floor_process
                    )
                    for round_no in range(1, rounds + 1):
                        hit = await cache_phase.measure_hits(
                            node, echo_channel, SOLO_NAMESPACE, value, samples,
                            random.Random(seed + round_no), setup.label, keys=MONGO_HIT_KEYS,
                            cpu=children.cpu_snapshot, processes=("echo", f"node-{setup.node_id}"),
                            block=block, floor=floor,
                        )  # fmt: skip
                        figures += hit_figures(setup, round_no, hit)
            finally:
                await cluster.stop_node(setup.node_id)
    finally:
        await cluster.close()
        await children.stop_all()
        await asyncio.to_thread(redis.stop)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The read cache's hit figures of `make bench`, alone.")
    parser.add_argument("--samples", type=int, default=5000, help="Gets (and echo calls) per round (5000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per engine (2)")
    parser.add_argument("--seed", type=int, help="seed of the key order (random by default)")
    parser.add_argument(
        "--block",
        type=int,
        default=cache_phase.HIT_BLOCK,
        help=f"Gets and echo calls made in turn this many of a kind at a time ({cache_phase.HIT_BLOCK})",
    )
    a = parser.parse_args(argv)
    # The children are forked while gRPC threads run; they exec a new interpreter at once.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    if not 1 <= a.samples <= 1_000_000 or not 1 <= a.rounds <= 20 or not 1 <= a.block <= a.samples:
        parser.error("--samples must be 1 to 1000000, --rounds 1 to 20 and --block 1 to --samples")
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 32)
    samples, rounds, block = a.samples, a.rounds, a.block
    return run_printed("domicile-bench-cache-", lambda root: run(samples, rounds, seed, root, block), seed)


if __name__ == "__main__":
    sys.exit(main())
