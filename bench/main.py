"""One benchmark run: baselines, local Get and Put, batched writes, replication lag, each next
to a baseline measured in the same run, printed as a table and written as JSON."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from bench import cache_phase, phases
from bench.client import Call, channel, echo_call, get_call, interleaved_ms, put_call, sequential_ms
from bench.cluster import (
    BATCH_METRIC,
    FAR_NAMESPACE,
    FAR_REGION,
    FAR_SYNC_NAMESPACE,
    LAG_METRIC,
    NEAR_REGION,
    PAIR_NAMESPACE,
    SCHEMA_FIELDS,
    SCHEMA_NAMESPACE,
    SOLO_NAMESPACE,
    SOLO_REGION,
    SOURCE_REGION,
    BenchCluster,
    NodeHandle,
    inbound_lag_p99_ms,
    twenty_field_value,
    wait_caught_up,
    wait_linked,
)
from bench.procs import REPO_ROOT, Children
from bench.report import Figure, cpu_lines, table, write_json
from bench.stats import Histogram, p99_within, percentile
from domicile.ports import free_port
from domicile.redis_server import RedisServer
from domicile.wire.limits import PUT_BATCH_RECORDS_MAX

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "latest.json"
PROXY_READY = re.compile(r"proxy listening on (\S+)")
GET_KEYS = 1000
# The local Get and Put figures and their baselines are made in turn, this many calls of a kind
# at a time (bench.client.interleaved_ms).
IN_TURN_BLOCK = 25
# Subjects the sealed Put phase writes about in turn (each one's data key is created once).
SEALED_SUBJECTS = 100
ENGINE_BATCH_RECORDS = 1000
LAG_WARMUP_WRITES = 50
SAMPLES_MAX = 1_000_000
SECONDS_MAX = 600.0

# Targets (DESIGN.md section 7).
GET_P99_RATIO_MAX = 1.5
MTLS_P99_RATIO_MAX = 1.15
# The plaintext twin of the solo node: same region and store settings, its own data directory.
PLAIN_NODE_ID = f"{SOLO_REGION}-plain"
# The same, on the MongoDB engine (SecantusDB, a child of the run); and the daemons of the
# records/s figure, one then two over one database.
MONGO_NODE_ID = f"{SOLO_REGION}-mongo"
DAEMON_IDS = (f"{SOLO_REGION}-d1", f"{SOLO_REGION}-d2")
BATCHED_RATE_MIN = 20_000.0
LAG_P99_MS_MAX = 100.0
DELAYED_LAG_SLACK_MS = 50.0
# Synchronous durability (min_regions_acked 2): the write's round trip to the other region.
SYNC_PUT_SLACK_MS = 10.0
SYNC_PUT_SAMPLES_MAX = 300
PACED_RATE_SHARE_MIN = 0.95  # the lag figure is only valid if the writes kept their pace
CACHE_HIT_P99_RATIO_MAX = 1.2
CACHED_NODE_ID = f"{SOLO_REGION}-cached"
# PutBatch load: calls in flight per process are --inflight divided by this (records in flight
# stay of the same order as the single-Put load's).
PUT_BATCH_INFLIGHT_DIVISOR = 16
PUT_BATCH_ENGINE_SHARE_MIN = 0.8
PUT_BATCH_CPU_US_MAX = 100.0
# CPU per single-record durable Put: at most the echo server's CPU per call plus this.
PUT_CPU_SLACK_US = 200.0
LOOP_LAG_METRIC = "domicile_event_loop_lag_seconds"
# The node samples its loop lag every 0.5 s (domicile/loop_lag.py); scraping as often sees each.
LOOP_LAG_SCRAPE_S = 0.5
CACHED_MONGO_NODE_ID = f"{SOLO_REGION}-cached-mongo"
# Fewer keys than on SQLite: each journaled MongoDB commit is slow on a loaded machine, and the
# pre-load's Puts have a deadline. A hit costs the same whatever the number of keys.
MONGO_HIT_KEYS = 200


@dataclass(frozen=True)
class Options:
    quick: bool
    out: Path
    samples: int
    value_bytes: int
    load_seconds: float
    load_procs: int
    inflight: int
    lag_seconds: float
    lag_rate: float
    delay_ms: float
    engine_batches: int
    batch_records: int
    seed: int
    keep_tmp: bool


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Domicile benchmarks on loopback, each figure next to a baseline from the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="short phases (under a minute)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--samples", type=int, help="sequential calls per latency figure (5000; quick 1000)")
    parser.add_argument("--value-bytes", type=int, default=256, help="value size of every write (256)")
    parser.add_argument(
        "--load-seconds", type=float, help="duration of each concurrent load (8 s; quick 2 s)"
    )
    parser.add_argument("--load-procs", type=int, default=2, help="load generator processes (2)")
    parser.add_argument("--inflight", type=int, default=128, help="calls in flight per load process (128)")
    parser.add_argument("--lag-seconds", type=float, help="paced writing per lag figure (10 s; quick 3 s)")
    parser.add_argument("--lag-rate", type=float, default=1000.0, help="paced writes per second (1000)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="injected one-way delay d (50 ms)")
    parser.add_argument("--engine-batches", type=int, help="engine-only batches of 1000 (30; quick 5)")
    parser.add_argument("--batch-records", type=int, default=100, help="records per PutBatch call (100)")
    parser.add_argument("--seed", type=int, help="seed of the Get key order (random by default)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (data and logs)")
    a = parser.parse_args(argv)
    opts = Options(
        quick=a.quick,
        out=a.out,
        samples=a.samples if a.samples is not None else (1000 if a.quick else 5000),
        value_bytes=a.value_bytes,
        load_seconds=a.load_seconds if a.load_seconds is not None else (2.0 if a.quick else 8.0),
        load_procs=a.load_procs,
        inflight=a.inflight,
        lag_seconds=a.lag_seconds if a.lag_seconds is not None else (3.0 if a.quick else 10.0),
        lag_rate=a.lag_rate,
        delay_ms=a.delay_ms,
        engine_batches=a.engine_batches if a.engine_batches is not None else (5 if a.quick else 30),
        batch_records=a.batch_records,
        seed=a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 32),
        keep_tmp=a.keep_tmp,
    )
    checks = [
        (1 <= opts.samples <= SAMPLES_MAX, f"--samples must be 1 to {SAMPLES_MAX}"),
        (1 <= opts.value_bytes <= 1024 * 1024, "--value-bytes must be 1 to 1048576 (the node's limit)"),
        (
            0 < opts.load_seconds <= SECONDS_MAX,
            f"--load-seconds must be above 0 and at most {SECONDS_MAX:.0f}",
        ),
        (1 <= opts.load_procs <= 16, "--load-procs must be 1 to 16"),
        (1 <= opts.inflight <= 1024, "--inflight must be 1 to 1024"),
        (0 < opts.lag_seconds <= SECONDS_MAX, f"--lag-seconds must be above 0 and at most {SECONDS_MAX:.0f}"),
        (1 <= opts.lag_rate <= 100_000, "--lag-rate must be 1 to 100000 writes/s"),
        (0 <= opts.delay_ms <= 10_000, "--delay-ms must be 0 to 10000"),
        (1 <= opts.engine_batches <= 1000, "--engine-batches must be 1 to 1000"),
        (
            1 <= opts.batch_records <= PUT_BATCH_RECORDS_MAX,
            f"--batch-records must be 1 to {PUT_BATCH_RECORDS_MAX}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return opts


def p50_p99(samples: list[float]) -> tuple[float, float]:
    return percentile(samples, 0.50), percentile(samples, 0.99)


@dataclass
class Measured:
    """Raw results, filled phase by phase."""

    echo_ms: list[float] | None = None
    # The same echo in plaintext: the baseline of the plaintext nodes' figures.
    plain_echo_ms: list[float] | None = None
    fsync_ms: list[float] | None = None
    get_ms: list[float] | None = None
    put_ms: list[float] | None = None
    plain_get_ms: list[float] | None = None
    plain_put_ms: list[float] | None = None
    sealed_put_ms: list[float] | None = None
    sealed_get_ms: list[float] | None = None
    mongo_get_ms: list[float] | None = None
    mongo_put_ms: list[float] | None = None
    one_daemon: phases.LoadResult | None = None
    two_daemons: tuple[phases.LoadResult, phases.LoadResult] | None = None
    # The same 20-field JSON value put into a namespace without a schema and into one with.
    unchecked_put_ms: list[float] | None = None
    schema_put_ms: list[float] | None = None
    echo_load: phases.LoadResult | None = None
    put_load: phases.LoadResult | None = None
    commit_batch_mean: float | None = None
    put_batch_load: phases.LoadResult | None = None
    # The node's event-loop lag gauge, scraped every LOOP_LAG_SCRAPE_S during the Put load.
    put_loop_lag_s: list[float] | None = None
    engine: phases.EngineResult | None = None
    engine_audit: phases.EngineResult | None = None
    lag: LagResult | None = None
    far_lag: LagResult | None = None
    cache: cache_phase.CacheResult | None = None
    # Echo and cache-hit latencies of a cached node on the MongoDB engine.
    cache_mongo: cache_phase.HitResult | None = None
    sync_put_ms: list[float] | None = None


@dataclass(frozen=True)
class LagResult:
    p50_ms: float
    p99_ms: float  # interpolated inside its bucket, as PromQL's histogram_quantile does
    status_p99_ms: float
    samples: int
    writes: phases.LoadResult
    # The lag histogram's observations over the phase: a p99 target on a bucket edge is judged
    # from it exactly (bench.stats.p99_within).
    hist: Histogram


class Run:
    def __init__(self, opts: Options, root: Path) -> None:
        self.opts = opts
        self.root = root
        (root / "logs").mkdir()
        self.children = Children(root / "logs", cwd=root)
        self.cluster = BenchCluster(root, self.children)
        self.value = b"v" * opts.value_bytes
        self.m = Measured()
        self.plain_echo_address = ""

    async def start(self) -> tuple[str, NodeHandle, NodeHandle, NodeHandle]:
        phases.progress(
            f"starting coordinator, echo servers (mutual TLS and plaintext), SecantusDB, node {SOLO_REGION} "
            "(mutual TLS), its "
            f"plaintext twin {PLAIN_NODE_ID} and a plaintext twin on MongoDB {MONGO_NODE_ID} in {self.root}"
        )
        mongo_port = free_port()
        self.mongodb_uri = f"mongodb://127.0.0.1:{mongo_port}/"
        await asyncio.gather(
            self.cluster.start_coordinator(),
            self.children.start_listening(
                "mongodb",
                ["-m", "secantus", "--host", "127.0.0.1", "--port", str(mongo_port),
                 "--storage-path", str(self.root / "mongodb"), "--log-level", "WARNING",
                 # Journaled writes on disk when acknowledged (README, MongoDB engine).
                 "--sync-on-commit"],
                mongo_port,
            ),
        )  # fmt: skip
        echo, self.plain_echo_address, solo, plain, mongo = await asyncio.gather(
            self.cluster.start_echo("echo"),
            self.cluster.start_echo("echo-plain", plaintext=True),
            self.cluster.start_node(SOLO_REGION, synchronous="FULL"),
            # No coordinator for it (it serves on the cluster config): what differs is the transport.
            self.cluster.start_node(SOLO_REGION, synchronous="FULL", node_id=PLAIN_NODE_ID, plaintext=True),
            # Plaintext as well: what differs from PLAIN_NODE_ID is the engine.
            self.cluster.start_node(
                SOLO_REGION,
                node_id=MONGO_NODE_ID,
                plaintext=True,
                mongodb=(self.mongodb_uri, "bench_get_put"),
            ),
        )
        return echo, solo, plain, mongo

    async def local_figures(
        self, echo_address: str, solo: NodeHandle, plain: NodeHandle, mongo: NodeHandle
    ) -> None:
        opts, m = self.opts, self.m
        # No more keys than Gets measured: a short run stays short.
        get_keys = min(GET_KEYS, opts.samples)
        keys = [f"get-{i}" for i in range(get_keys)]
        phases.progress(f"pre-loading {get_keys} keys for Get on every node")
        for node in (solo, plain, mongo):
            await phases.preload(put_call(node.channel, SOLO_NAMESPACE, "get", self.value), get_keys)
        rng = random.Random(self.opts.seed)

        def get(node: NodeHandle) -> Call:
            return get_call(node.channel, SOLO_NAMESPACE, keys, lambda: rng.randrange(get_keys))

        # Each figure and its baselines are made in turn (bench.client.interleaved_ms: blocks of
        # IN_TURN_BLOCK calls of a kind, in an order drawn anew each round), so that the moments
        # of a shared machine fall on all of them alike.
        async with (
            channel(echo_address, self.cluster.dialer) as echo_ch,
            channel(self.plain_echo_address, self.cluster.plain_dialer) as plain_echo_ch,
        ):
            phases.progress(
                f"echo baselines (mutual TLS, plaintext) and local Gets (mutual TLS, plaintext, MongoDB "
                f"engine) in turn, {IN_TURN_BLOCK} of a kind at a time: {opts.samples} of each"
            )
            m.echo_ms, m.plain_echo_ms, m.get_ms, m.plain_get_ms, m.mongo_get_ms = await interleaved_ms(
                [
                    echo_call(echo_ch, SOLO_NAMESPACE, "echo", self.value),
                    echo_call(plain_echo_ch, SOLO_NAMESPACE, "echo", self.value),
                    get(solo),
                    get(plain),
                    get(mongo),
                ],
                opts.samples,
                rng,
                block=IN_TURN_BLOCK,
            )
        phases.progress(f"fdatasync baseline: {opts.samples} appends in {solo.data_dir}")
        m.fsync_ms = await asyncio.to_thread(
            phases.fdatasync_ms, solo.data_dir, opts.samples, opts.value_bytes
        )
        phases.progress(
            f"durable Puts (synchronous=FULL on SQLite; majority, journaled on MongoDB) over mutual "
            f"TLS, plaintext and the MongoDB engine in turn: {opts.samples} of each"
        )
        m.put_ms, m.plain_put_ms, m.mongo_put_ms = await interleaved_ms(
            [put_call(node.channel, SOLO_NAMESPACE, "put", self.value) for node in (solo, plain, mongo)],
            opts.samples,
            rng,
            block=IN_TURN_BLOCK,
        )
        # The price of the quality gate: one 20-field value, into the same node with and without a
        # schema to check, in turn.
        record = twenty_field_value()
        phases.progress(
            f"durable Puts of a {SCHEMA_FIELDS}-field JSON value without and with a schema, in turn: "
            f"{opts.samples} of each"
        )
        m.unchecked_put_ms, m.schema_put_ms = await interleaved_ms(
            [put_call(solo.channel, ns, "json", record) for ns in (SOLO_NAMESPACE, SCHEMA_NAMESPACE)],
            opts.samples,
            rng,
            block=IN_TURN_BLOCK,
        )
        # The same with subject data: encrypted under per-subject keys at rest, opened on read.
        m.sealed_put_ms = await phases.sequential(
            f"durable Put of subject data ({SEALED_SUBJECTS} subjects, sealed)",
            put_call(solo.channel, SOLO_NAMESPACE, "sealed", self.value, subjects=SEALED_SUBJECTS),
            opts.samples,
        )
        sealed_keys = [f"sealed-{i}" for i in range(min(GET_KEYS, opts.samples))]
        m.sealed_get_ms = await phases.sequential(
            "local Get of subject data (opened)",
            get_call(solo.channel, SOLO_NAMESPACE, sealed_keys, lambda: rng.randrange(len(sealed_keys))),
            opts.samples,
        )

    async def cache_figures(self, echo_address: str) -> None:
        """A node of the same region whose Gets go through a Redis of its own (SQLite engine)."""
        redis = RedisServer(self.root / "redis")
        phases.progress(f"cache: starting redis-server and node {CACHED_NODE_ID} with the read cache")
        await asyncio.to_thread(redis.start)
        try:
            cached = await self.cluster.start_node(
                SOLO_REGION,
                synchronous="FULL",
                node_id=CACHED_NODE_ID,
                # Plaintext, as the echo server is: the hit figures price the node's work, not
                # TLS (the mutual-TLS figure above prices that).
                plaintext=True,
                extra_args=("--cache-redis-url", redis.url, "--cache-redis-region", SOLO_REGION),
            )
            async with channel(echo_address, self.cluster.plain_dialer) as echo:
                self.m.cache = await cache_phase.measure(
                    cached, echo, SOLO_NAMESPACE, self.value, self.opts.samples, self.opts.seed
                )
        finally:
            await self.cluster.stop_node(CACHED_NODE_ID)
        # The same on the MongoDB engine: its cache also follows the database's change stream.
        phases.progress(f"cache: node {CACHED_MONGO_NODE_ID} on MongoDB with the read cache")
        try:
            cached = await self.cluster.start_node(
                SOLO_REGION,
                node_id=CACHED_MONGO_NODE_ID,
                mongodb=(self.mongodb_uri, "bench_cache"),
                plaintext=True,
                extra_args=("--cache-redis-url", redis.url, "--cache-redis-region", SOLO_REGION),
            )
            async with channel(echo_address, self.cluster.plain_dialer) as echo:
                self.m.cache_mongo = await cache_phase.measure_hits(
                    cached, echo, SOLO_NAMESPACE, self.value, self.opts.samples,
                    random.Random(self.opts.seed), "MongoDB",
                    keys=min(MONGO_HIT_KEYS, max(10, self.opts.samples)),
                )  # fmt: skip
        finally:
            await self.cluster.stop_node(CACHED_MONGO_NODE_ID)
            await asyncio.to_thread(redis.stop)

    async def batched(self, echo_address: str, solo: NodeHandle) -> None:
        opts, m = self.opts, self.m

        async def last_lsn() -> int:
            return int((await solo.status()).last_lsn)

        async def load(
            name: str, address: str, method: str, counter: Callable[[], Awaitable[int]] | None
        ) -> phases.LoadResult:
            return await phases.concurrent_load(
                self.children,
                name=name,
                address=address,
                method=method,
                namespace=SOLO_NAMESPACE,
                value_bytes=opts.value_bytes,
                procs=opts.load_procs,
                inflight=opts.inflight,
                seconds=opts.load_seconds,
                server_counter=counter,
                tls_dir=self.cluster.tls_dir,
            )

        m.echo_load = await load("echo-load", echo_address, "echo", None)
        before = await solo.histogram(BATCH_METRIC, {})
        m.put_loop_lag_s = []
        sampler = asyncio.create_task(sample_gauge(solo, LOOP_LAG_METRIC, m.put_loop_lag_s))
        try:
            m.put_load = await load("put-load", solo.address, "put", last_lsn)
        finally:
            sampler.cancel()
        after = await solo.histogram(BATCH_METRIC, {})
        # The same node, records sent PutBatch calls at a time: fewer calls in flight per
        # process, as many records.
        m.put_batch_load = await phases.concurrent_load(
            self.children,
            name="put-batch-load",
            address=solo.address,
            method="put_batch",
            namespace=SOLO_NAMESPACE,
            value_bytes=opts.value_bytes,
            procs=opts.load_procs,
            inflight=max(1, opts.inflight // PUT_BATCH_INFLIGHT_DIVISOR),
            seconds=opts.load_seconds,
            tls_dir=self.cluster.tls_dir,
            batch_records=opts.batch_records,
        )
        batches = after.minus(before) if after else None
        # None when the node does not observe the histogram: the figure then reads n/a, not 0.
        m.commit_batch_mean = batches.total / batches.count if batches and batches.count else None

    async def daemons(self) -> None:
        """Durable Puts per second into one region on MongoDB: one daemon, then two daemons over
        the same database (each its own process), with the same load processes in all."""
        opts = self.opts
        database = (self.mongodb_uri, "bench_daemons")
        first = await self.cluster.start_node(
            SOLO_REGION, node_id=DAEMON_IDS[0], plaintext=True, mongodb=database
        )

        async def load(name: str, node: NodeHandle, procs: int) -> phases.LoadResult:
            async def last_lsn() -> int:
                return int((await node.status()).last_lsn)

            return await phases.concurrent_load(
                self.children,
                name=name,
                address=node.address,
                method="put",
                namespace=SOLO_NAMESPACE,
                value_bytes=opts.value_bytes,
                procs=procs,
                inflight=opts.inflight,
                seconds=opts.load_seconds,
                server_counter=last_lsn,
            )

        self.m.one_daemon = await load("one-daemon", first, opts.load_procs)
        second = await self.cluster.start_node(
            SOLO_REGION, node_id=DAEMON_IDS[1], plaintext=True, mongodb=database
        )
        share = max(1, opts.load_procs // 2)
        self.m.two_daemons = await asyncio.gather(
            load("two-daemons-a", first, share), load("two-daemons-b", second, share)
        )
        await asyncio.gather(*(self.cluster.stop_node(n) for n in DAEMON_IDS))

    async def engine_only(self) -> None:
        opts = self.opts
        phases.progress(
            f"engine only: {opts.engine_batches} x commit_local({ENGINE_BATCH_RECORDS}) in-process, "
            "synchronous=FULL"
        )
        self.m.engine = await asyncio.to_thread(
            phases.engine_commit_rate,
            self.root / "engine-only",
            opts.engine_batches,
            ENGINE_BATCH_RECORDS,
            opts.value_bytes,
        )
        phases.progress("the engine with its audit trail: the same, each write carrying its audit entry")
        self.m.engine_audit = await phases.engine_audit_commit_rate(
            self.root / "engine-audit", opts.engine_batches, ENGINE_BATCH_RECORDS, opts.value_bytes
        )

    async def lag(self, what: str, source: NodeHandle, target: NodeHandle, namespace: str) -> LagResult:
        opts = self.opts
        phases.progress(f"{what}: waiting for the link {source.node_id} -> {target.node_id}")
        await wait_linked(source, target)
        # Sequential, so that the warm-up adds no burst to the status window's recent samples.
        await sequential_ms(put_call(source.channel, namespace, "warmup", self.value), LAG_WARMUP_WRITES, 0)
        await wait_caught_up(source, target)
        labels = {"source": source.node_id, "target": target.node_id}
        before = await target.histogram(LAG_METRIC, labels)
        writes = await phases.paced(
            self.children,
            what,
            put_call(source.channel, namespace, "lag", self.value),
            opts.lag_rate,
            opts.lag_seconds,
        )
        await wait_caught_up(source, target)
        after = await target.histogram(LAG_METRIC, labels)
        if after is None:
            raise RuntimeError(f"{target.node_id} exports no {LAG_METRIC} series for {labels}")
        delta = after.minus(before)
        return LagResult(
            p50_ms=delta.quantile(0.50) * 1000,
            p99_ms=delta.quantile(0.99) * 1000,
            status_p99_ms=await inbound_lag_p99_ms(target, source),
            samples=int(delta.count),
            writes=writes,
            hist=delta,
        )

    async def replication(self) -> None:
        phases.progress(f"starting nodes {SOURCE_REGION} and {NEAR_REGION}")
        source, near = await asyncio.gather(
            self.cluster.start_node(SOURCE_REGION), self.cluster.start_node(NEAR_REGION)
        )
        self.m.lag = await self.lag("replication lag", source, near, PAIR_NAMESPACE)

        # A third node behind a proxy that delays every byte by d each way: a distant region.
        far_port = free_port()
        phases.progress(f"starting node {FAR_REGION} behind a {self.opts.delay_ms:.0f} ms one-way delay")
        match = await self.children.start_daemon(
            "proxy",
            [
                "-m",
                "bench.delay_proxy",
                "--target",
                f"127.0.0.1:{far_port}",
                "--delay-ms",
                str(self.opts.delay_ms),
            ],
            PROXY_READY,
        )
        far = await self.cluster.start_node(FAR_REGION, listen_port=far_port, advertise=match.group(1))
        self.m.far_lag = await self.lag("delayed replication lag", source, far, FAR_NAMESPACE)
        # Each sample is a round trip over the delay: fewer of them than for the local figures.
        self.m.sync_put_ms = await phases.sequential(
            f"synchronous Put, 2 regions, {self.opts.delay_ms:.0f} ms one-way delay",
            put_call(source.channel, FAR_SYNC_NAMESPACE, "sync", self.value),
            min(self.opts.samples, SYNC_PUT_SAMPLES_MAX),
        )

    async def execute(self) -> None:
        try:
            echo_address, solo, plain, mongo = await self.start()
            await self.local_figures(echo_address, solo, plain, mongo)
            await asyncio.gather(self.cluster.stop_node(PLAIN_NODE_ID), self.cluster.stop_node(MONGO_NODE_ID))
            await self.cache_figures(self.plain_echo_address)
            await self.batched(echo_address, solo)
            # Free the CPU for what follows: the engine-only figure runs in this process.
            await asyncio.gather(
                self.children.stop("echo"),
                self.children.stop("echo-plain"),
                self.cluster.stop_node(SOLO_REGION),
            )
            await self.engine_only()
            await self.daemons()
            await self.replication()
        finally:
            phases.progress("stopping every process")
            await self.cluster.close()
            await self.children.stop_all()


T = TypeVar("T")


async def sample_gauge(node: NodeHandle, name: str, into: list[float]) -> None:
    """Appends the node's unlabelled gauge `name` every LOOP_LAG_SCRAPE_S until cancelled."""
    pattern = re.compile(rf"^{re.escape(name)} (\S+)$", re.MULTILINE)
    while True:
        await asyncio.sleep(LOOP_LAG_SCRAPE_S)
        found = pattern.search(await node.scrape())
        if found:
            into.append(float(found.group(1)))


def cpu_us_per_call(load: phases.LoadResult, process: str) -> float | None:
    """CPU microseconds `process` spent per completed call of `load` (its cores over the load's
    window times the window, over the calls)."""
    cores = load.cpu_cores.get(process)
    if cores is None or not load.completed:
        return None
    return cores * load.seconds / load.completed * 1e6


def within_figure(key: str, what: str, limit_ms: float, share: float | None) -> list[Figure]:
    """The share of records applied within a p99 target on a bucket edge of the lag histogram
    (none when the target is not on an edge): the exact reading of whether the p99 is met."""
    if share is None:
        return []
    return [
        Figure(
            key, f"{what} records applied within {limit_ms:.0f} ms", 100 * share, "%",
            target=">= 99% (p99 within)", met=share >= 0.99,
        )
    ]  # fmt: skip


def need(value: T | None, what: str) -> T:
    if value is None:
        raise RuntimeError(f"the {what} phase produced no measurement")
    return value


def figures(m: Measured, opts: Options) -> list[Figure]:
    echo_ms, fsync_ms = need(m.echo_ms, "echo"), need(m.fsync_ms, "fdatasync")
    get_ms, put_ms = need(m.get_ms, "Get"), need(m.put_ms, "Put")
    echo_load, put_load = need(m.echo_load, "echo load"), need(m.put_load, "Put load")
    engine, lag, far = need(m.engine, "engine"), need(m.lag, "lag"), need(m.far_lag, "delayed lag")
    engine_audit = need(m.engine_audit, "engine with its audit trail")
    far_limit_ms = opts.delay_ms + DELAYED_LAG_SLACK_MS
    lag_met, lag_share = p99_within(lag.hist, LAG_P99_MS_MAX)
    far_met, far_share = p99_within(far.hist, far_limit_ms)
    echo50, echo99 = p50_p99(echo_ms)
    plain_echo50, plain_echo99 = p50_p99(need(m.plain_echo_ms, "plaintext echo"))
    fs50, fs99 = p50_p99(fsync_ms)
    get50, get99 = p50_p99(get_ms)
    put50, put99 = p50_p99(put_ms)
    sync50, sync99 = p50_p99(need(m.sync_put_ms, "synchronous Put"))
    _, plain_get99 = p50_p99(need(m.plain_get_ms, "plaintext Get"))
    _, plain_put99 = p50_p99(need(m.plain_put_ms, "plaintext Put"))
    sealed_put50, sealed_put99 = p50_p99(need(m.sealed_put_ms, "sealed Put"))
    sealed_get50, sealed_get99 = p50_p99(need(m.sealed_get_ms, "sealed Get"))
    _, mongo_get99 = p50_p99(need(m.mongo_get_ms, "MongoDB Get"))
    _, mongo_put99 = p50_p99(need(m.mongo_put_ms, "MongoDB Put"))
    one_daemon = need(m.one_daemon, "one daemon").rate
    two_daemons = sum(r.rate for r in need(m.two_daemons, "two daemons"))
    _, unchecked_put99 = p50_p99(need(m.unchecked_put_ms, "Put without a schema"))
    _, schema_put99 = p50_p99(need(m.schema_put_ms, "Put with a schema"))
    put_floor50, put_floor99 = echo50 + 2 * fs50, echo99 + 2 * fs99
    d = opts.delay_ms
    concurrency = f"{opts.load_procs} procs x {opts.inflight} in flight"
    echo_cpu_us = cpu_us_per_call(echo_load, "echo")
    put_cpu_us = cpu_us_per_call(put_load, f"node-{SOLO_REGION}")
    put_cpu_floor = echo_cpu_us + PUT_CPU_SLACK_US if echo_cpu_us is not None else None
    loop_lags = need(m.put_loop_lag_s, "loop lag")
    batch_load = need(m.put_batch_load, "PutBatch load")
    batch_cpu_us = cpu_us_per_call(batch_load, f"node-{SOLO_REGION}")
    batch_floor = max(BATCHED_RATE_MIN, PUT_BATCH_ENGINE_SHARE_MIN * engine.rate)
    loop_lag_max_ms = max(loop_lags) * 1e3 if loop_lags else None
    rate_floor = PACED_RATE_SHARE_MIN * opts.lag_rate
    return [
        Figure("echo_p50_ms", "baseline: grpc.aio echo p50 (mutual TLS)", echo50, "ms"),
        Figure("echo_p99_ms", "baseline: grpc.aio echo p99 (mutual TLS)", echo99, "ms"),
        Figure("plain_echo_p50_ms", "baseline: grpc.aio echo p50 (plaintext)", plain_echo50, "ms"),
        Figure("plain_echo_p99_ms", "baseline: grpc.aio echo p99 (plaintext)", plain_echo99, "ms"),
        Figure("fdatasync_p50_ms", "baseline: append + fdatasync p50", fs50, "ms"),
        Figure("fdatasync_p99_ms", "baseline: append + fdatasync p99", fs99, "ms"),
        Figure("echo_rate_per_s", f"baseline: concurrent echo ({concurrency})", echo_load.rate, "calls/s"),
        Figure("get_p50_ms", "local Get p50", get50, "ms", echo50, "echo p50"),
        Figure(
            "get_p99_ms",
            "local Get p99",
            get99,
            "ms",
            echo99,
            "echo p99",
            f"<= {GET_P99_RATIO_MAX} x echo p99",
            get99 <= GET_P99_RATIO_MAX * echo99,
        ),
        Figure("put_p50_ms", "durable Put p50 (FULL)", put50, "ms", put_floor50, "echo + 2 fdatasync p50"),
        Figure(
            "put_p99_ms",
            "durable Put p99 (FULL)",
            put99,
            "ms",
            put_floor99,
            "echo + 2 fdatasync p99",
            "<= echo p99 + 2 x fdatasync p99",
            put99 <= put_floor99,
        ),
        Figure("plain_get_p99_ms", "baseline: local Get p99, plaintext node", plain_get99, "ms"),
        Figure(
            "mtls_get_p99_ms",
            "local Get p99, mutual TLS",
            get99,
            "ms",
            plain_get99,
            "plaintext Get p99",
            f"<= {MTLS_P99_RATIO_MAX} x plaintext p99",
            get99 <= MTLS_P99_RATIO_MAX * plain_get99,
        ),
        Figure("plain_put_p99_ms", "baseline: durable Put p99, plaintext node", plain_put99, "ms"),
        Figure(
            "mtls_put_p99_ms",
            "durable Put p99, mutual TLS",
            put99,
            "ms",
            plain_put99,
            "plaintext Put p99",
            f"<= {MTLS_P99_RATIO_MAX} x plaintext p99",
            put99 <= MTLS_P99_RATIO_MAX * plain_put99,
        ),
        Figure(
            "unchecked_put_p99_ms",
            f"baseline: durable Put p99, {SCHEMA_FIELDS}-field JSON, no schema",
            unchecked_put99,
            "ms",
        ),
        Figure(
            "schema_put_p99_ms",
            f"durable Put p99, {SCHEMA_FIELDS}-field JSON Schema checked",
            schema_put99,
            "ms",
            unchecked_put99,
            "the same Put without a schema",
        ),
        Figure(
            "sealed_put_p50_ms",
            "durable Put p50, subject data (sealed)",
            sealed_put50,
            "ms",
            put50,
            "Put p50",
        ),
        Figure(
            "sealed_put_p99_ms",
            "durable Put p99, subject data (sealed)",
            sealed_put99,
            "ms",
            put99,
            "Put p99",
        ),
        Figure(
            "sealed_get_p50_ms", "local Get p50, subject data (opened)", sealed_get50, "ms", get50, "Get p50"
        ),
        Figure(
            "sealed_get_p99_ms", "local Get p99, subject data (opened)", sealed_get99, "ms", get99, "Get p99"
        ),
        *cache_figures(need(m.cache, "cache"), get99),
        *cache_mongo_figures(need(m.cache_mongo, "cache on MongoDB")),
        Figure(
            "mongodb_get_p99_ms",
            "local Get p99, MongoDB engine (plaintext)",
            mongo_get99,
            "ms",
            plain_get99,
            "SQLite Get p99 (plaintext)",
        ),
        Figure(
            "mongodb_get_p99_vs_echo_ms",
            "local Get p99, MongoDB engine (plaintext)",
            mongo_get99,
            "ms",
            plain_echo99,
            "plaintext echo p99",
        ),
        Figure(
            "mongodb_put_p99_ms",
            "durable Put p99, MongoDB engine (majority, journaled)",
            mongo_put99,
            "ms",
            plain_put99,
            "SQLite durable Put p99 (plaintext)",
        ),
        Figure(
            "mongodb_one_daemon_rate_per_s",
            f"durable Puts into one region on MongoDB, 1 daemon ({concurrency})",
            one_daemon,
            "records/s",
        ),
        Figure(
            "mongodb_two_daemons_rate_per_s",
            "the same, 2 daemons over one database (load split between them)",
            two_daemons,
            "records/s",
            one_daemon,
            "1 daemon",
        ),
        Figure(
            "batched_put_rate_per_s",
            f"batched Puts over gRPC ({concurrency})",
            put_load.rate,
            "records/s",
            echo_load.rate,
            "concurrent echo",
            f">= {BATCHED_RATE_MIN:,.0f} records/s",
            put_load.rate >= BATCHED_RATE_MIN,
        ),
        Figure(
            "echo_cpu_us_per_call", "baseline: echo server CPU per call (concurrent echo)", echo_cpu_us, "us"
        ),
        Figure(
            "put_cpu_us_per_write",
            "node CPU per single-record durable Put (batched Puts load)",
            put_cpu_us,
            "us",
            put_cpu_floor,
            f"echo CPU per call + {PUT_CPU_SLACK_US:.0f} us",
            f"<= echo CPU per call + {PUT_CPU_SLACK_US:.0f} us",
            put_cpu_us <= put_cpu_floor if put_cpu_us is not None and put_cpu_floor is not None else None,
        ),
        Figure(
            "put_loop_lag_max_ms",
            f"node event-loop lag under the Put load, max of {len(loop_lags)} samples",
            loop_lag_max_ms,
            "ms",
            echo99,
            "echo p99",
        ),
        Figure(
            "put_batch_rate_per_s",
            f"PutBatch records/s ({opts.batch_records} per call, {opts.load_procs} procs x "
            f"{max(1, opts.inflight // PUT_BATCH_INFLIGHT_DIVISOR)} calls in flight)",
            batch_load.rate,
            "records/s",
            engine.rate,
            "engine only",
            f">= {BATCHED_RATE_MIN:,.0f} records/s and >= {PUT_BATCH_ENGINE_SHARE_MIN} x engine only",
            batch_load.rate >= batch_floor,
        ),
        Figure(
            "put_batch_cpu_us_per_record",
            "node CPU per record written by PutBatch",
            batch_cpu_us,
            "us",
            put_cpu_us,
            "CPU per single-record Put",
            f"<= {PUT_BATCH_CPU_US_MAX:.0f} us",
            batch_cpu_us <= PUT_BATCH_CPU_US_MAX if batch_cpu_us is not None else None,
        ),
        Figure(
            "batched_put_lsn_rate_per_s",
            "batched Puts, node's change-log growth",
            put_load.server_rate,
            "records/s",
        ),
        Figure(
            "commit_batch_records_mean", "records per group commit (mean)", m.commit_batch_mean, "records"
        ),
        Figure(
            "engine_commit_rate_per_s",
            "engine only: commit_local x 1000, in-process, no RPC",
            engine.rate,
            "records/s",
        ),
        Figure("engine_cpu_us_per_record", "engine only: CPU per record", engine.cpu_us_per_record, "us"),
        # What a PutBatch record costs at least: no write is durable without its audit entry.
        # Its ratio to the engine alone bounds the PutBatch figure's from above.
        Figure(
            "engine_audit_commit_rate_per_s",
            "engine with its audit trail: each write carrying its entry, in-process, no RPC",
            engine_audit.rate,
            "records/s",
            engine.rate,
            "engine only",
        ),
        Figure(
            "engine_audit_cpu_us_per_record",
            "engine with its audit trail: CPU per record",
            engine_audit.cpu_us_per_record,
            "us",
            engine.cpu_us_per_record,
            "engine only",
        ),
        Figure(
            "lag_p50_ms",
            "replication lag p50 (histogram)",
            lag.p50_ms,
            "ms",
            put_floor50,
            "echo + 2 fdatasync p50",
        ),
        Figure(
            "lag_p99_ms",
            "replication lag p99 (histogram, interpolated in its bucket)",
            lag.p99_ms,
            "ms",
            put_floor99,
            "echo + 2 fdatasync p99",
            f"<= {LAG_P99_MS_MAX:.0f} ms",
            lag_met,
        ),
        *within_figure("lag_within_pct", "replication lag", LAG_P99_MS_MAX, lag_share),
        Figure("lag_status_p99_ms", "replication lag p99 (GetNodeStatus window)", lag.status_p99_ms, "ms"),
        Figure(
            "lag_write_rate_per_s",
            "paced write rate during lag",
            lag.writes.rate,
            "writes/s",
            None,
            "",
            f">= {rate_floor:,.0f} writes/s (paced {opts.lag_rate:,.0f})",
            lag.writes.rate >= rate_floor,
        ),
        Figure(
            "delayed_lag_p50_ms",
            f"lag p50, one-way delay {d:.0f} ms",
            far.p50_ms,
            "ms",
            d + put_floor50,
            "d + echo + 2 fdatasync p50",
        ),
        Figure(
            "delayed_lag_p99_ms",
            f"lag p99, one-way delay {d:.0f} ms (interpolated in its bucket)",
            far.p99_ms,
            "ms",
            d + put_floor99,
            "d + echo + 2 fdatasync p99",
            f"<= d + {DELAYED_LAG_SLACK_MS:.0f} ms = {far_limit_ms:.0f} ms",
            far_met,
        ),
        *within_figure("delayed_lag_within_pct", f"lag, one-way delay {d:.0f} ms,", far_limit_ms, far_share),
        Figure(
            "delayed_lag_status_p99_ms", "delayed lag p99 (GetNodeStatus window)", far.status_p99_ms, "ms"
        ),
        Figure(
            "sync_put_p50_ms",
            f"synchronous Put p50, 2 regions, one-way delay {d:.0f} ms",
            sync50,
            "ms",
            2 * d,
            "2 x d",
        ),
        Figure(
            "sync_put_p99_ms",
            f"synchronous Put p99, 2 regions, one-way delay {d:.0f} ms",
            sync99,
            "ms",
            2 * d,
            "2 x d",
            f"<= 2 d + {SYNC_PUT_SLACK_MS:.0f} ms = {2 * d + SYNC_PUT_SLACK_MS:.0f} ms",
            sync99 <= 2 * d + SYNC_PUT_SLACK_MS,
        ),
        Figure(
            "delayed_write_rate_per_s",
            "paced write rate during delayed lag",
            far.writes.rate,
            "writes/s",
            None,
            "",
            f">= {rate_floor:,.0f} writes/s (paced {opts.lag_rate:,.0f})",
            far.writes.rate >= rate_floor,
        ),
    ]


def cache_mongo_figures(c: cache_phase.HitResult) -> list[Figure]:
    _, echo99 = p50_p99(c.echo_ms)
    _, hit99 = p50_p99(c.hit_ms)
    return [
        Figure(
            "cache_hit_mongo_get_p99_ms",
            "Get p99, a Redis hit (MongoDB engine)",
            hit99,
            "ms",
            echo99,
            "echo p99 (in turn)",
            f"<= {CACHE_HIT_P99_RATIO_MAX} x echo p99",
            hit99 <= CACHE_HIT_P99_RATIO_MAX * echo99,
        ),
        Figure(
            "cache_hit_mongo_hit_share",
            "share of those Gets answered from the cache (MongoDB engine)",
            c.hit_share,
            "ratio",
        ),
    ]


def cache_figures(c: cache_phase.CacheResult, get99: float) -> list[Figure]:
    """On the SQLite engine."""
    echo50, echo99 = p50_p99(c.echo_ms)
    hit50, hit99 = p50_p99(c.hit_ms)
    _, miss99 = p50_p99(c.miss_ms)
    return [
        Figure("cache_echo_p99_ms", "baseline: echo p99, in turn with cache hits", echo99, "ms"),
        Figure(
            "cache_hit_get_p50_ms", "Get p50, a Redis hit (SQLite engine)", hit50, "ms", echo50, "echo p50"
        ),
        Figure(
            "cache_hit_get_p99_ms",
            "Get p99, a Redis hit (SQLite engine)",
            hit99,
            "ms",
            echo99,
            "echo p99",
            f"<= {CACHE_HIT_P99_RATIO_MAX} x echo p99",
            hit99 <= CACHE_HIT_P99_RATIO_MAX * echo99,
        ),
        Figure(
            "cache_miss_get_p99_ms",
            "Get p99, a miss (lookup, store, fill)",
            miss99,
            "ms",
            get99,
            "uncached Get p99",
        ),
        Figure(
            "cache_zipf_hit_ratio",
            f"cache hit ratio, Zipf s={cache_phase.ZIPF_EXPONENT} reads of {cache_phase.ZIPF_KEYS} keys "
            f"with {cache_phase.ZIPF_WRITE_SHARE:.0%} Puts",
            c.zipf_hit_ratio,
            "ratio",
        ),
    ]


def cpu_by_load(m: Measured) -> dict[str, dict[str, float]]:
    loads = {
        "concurrent echo": m.echo_load,
        "batched Puts": m.put_load,
        "PutBatch": m.put_batch_load,
        "MongoDB, 1 daemon": m.one_daemon,
        "MongoDB, 2 daemons (first)": m.two_daemons[0] if m.two_daemons else None,
        "MongoDB, 2 daemons (second)": m.two_daemons[1] if m.two_daemons else None,
        "replication lag": m.lag.writes if m.lag else None,
        "delayed replication lag": m.far_lag.writes if m.far_lag else None,
    }
    return {name: load.cpu_cores for name, load in loads.items() if load is not None}


def meta(opts: Options, m: Measured, started: datetime, seconds: float) -> dict[str, Any]:
    parameters = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    loads = {
        "echo_load": m.echo_load,
        "put_load": m.put_load,
        "put_batch_load": m.put_batch_load,
        "mongodb_one_daemon": m.one_daemon,
        "mongodb_two_daemons_first": m.two_daemons[0] if m.two_daemons else None,
        "mongodb_two_daemons_second": m.two_daemons[1] if m.two_daemons else None,
        "lag_writes": m.lag.writes if m.lag else None,
        "delayed_lag_writes": m.far_lag.writes if m.far_lag else None,
    }
    return {
        "schema_version": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(seconds, 1),
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        "parameters": parameters,
        "samples": {
            "lag_histogram_observations": m.lag.samples if m.lag else 0,
            "delayed_lag_histogram_observations": m.far_lag.samples if m.far_lag else 0,
        },
        "loads": {
            name: None if r is None else {**asdict(r), "rate_per_s": r.rate} for name, r in loads.items()
        },
    }


async def run(opts: Options) -> int:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="domicile-bench-"))
    bench = Run(opts, root)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if main_task is not None:
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        await bench.execute()
    except (asyncio.CancelledError, KeyboardInterrupt):
        bench.children.kill_all_now()
        if not opts.keep_tmp:
            shutil.rmtree(root, ignore_errors=True)
        raise
    except BaseException:
        print(f"benchmark failed; process logs are in {root / 'logs'}", file=sys.stderr)
        bench.children.kill_all_now()
        raise
    if opts.keep_tmp:
        print(f"data and logs kept in {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    results = figures(bench.m, opts)
    write_json(opts.out, results, meta(opts, bench.m, started_at, time.monotonic() - started))
    print(table(results))
    print()
    print(cpu_lines(cpu_by_load(bench.m), os.cpu_count()))
    for name, load in (("Put load", bench.m.put_load), ("echo load", bench.m.echo_load)):
        if load is not None and load.errors:
            print(
                f"warning: {name} had {load.errors} failed calls; first: {load.first_error}", file=sys.stderr
            )
    print(f"results written to {opts.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        return asyncio.run(run(opts))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every child process was stopped", file=sys.stderr)
        return 130
