"""Replication figures: what a replicated record costs at each end and how far behind the
replicas are, under paced load (`python -m bench.replication [--quick] [--profile DIR]`).

One cluster of seven regions, every daemon on mutual TLS as deployed; one source node writes
and the figures are measured at its targets:
- local baseline: the source alone, 1,000 Puts/s into a namespace without replicas, so that
  the source's CPU per write without replication is known from the same run;
- one replica: 1,000 Puts/s into a namespace the source shares with one target;
- batches: 5,000 records/s in batches of 50 to the same target (PutBatch when the node offers
  it, otherwise 50 concurrent Puts per batch; the JSON says which);
- global: 1,000 Puts/s into a namespace held in six regions (five links from the source);
- delayed: 1,000 Puts/s to a seventh region behind a proxy that delays each byte by d.
- sync: sequential Puts into a namespace with min_regions_acked 2 held at the source and the
  delayed region: each is acknowledged once both hold it, a round trip over the delay (target
  2 d + 10 ms at p99). Made in turn with them, round trips of a bare TCP echo behind a proxy
  of its own with the same delay: the delay as the emulated network gives it in this
  run (the proxy's lateness and the wake-ups of the processes on the way included), which the
  Put p99 is also read against (round trip p99 + 10 ms).
Lag quantiles come from the targets' domicile_replication_lag_seconds histograms (scraped
before and after, subtracted); the source's event-loop lag per phase likewise, from its
domicile_event_loop_lag_sampled_seconds (a timer checked twenty times a second). CPU per
record is each process's CPU time over the load, counted until the targets have caught up,
divided by the records written.

With --profile DIR, py-spy samples the source and the target during the one-replica phase
(and the target of the batch phase) and the top functions by share of samples go to the
table and to DIR (collapsed stacks, for a flame graph).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench import machine, phases, sync_floor, tcp_echo
from bench.client import RPC_DEADLINE_S, Call, interleaved_ms, put_call, put_request, sequential_ms
from bench.cluster import LAG_METRIC, BenchCluster, NodeHandle, wait_caught_up, wait_linked
from bench.procs import REPO_ROOT, Children
from bench.report import Figure, table, write_json
from bench.stats import Histogram, p99_within, percentile
from domicile.ports import free_port
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "replication.json"
CLIENT = "bench"
SOURCE = "eu-west-1"
NEAR = "eu-central-1"
FAR = "eu-north-1"  # behind the delay proxy
# With SOURCE and NEAR, the six regions of the global namespace.
OTHERS = ("eu-south-1", "eu-west-3", "eu-south-2", "eu-central-2")
COUNTRIES = {
    SOURCE: "IE",
    NEAR: "DE",
    FAR: "SE",
    "eu-south-1": "IT",
    "eu-west-3": "FR",
    "eu-south-2": "ES",
    "eu-central-2": "AT",
}
GLOBAL_REGIONS = (SOURCE, NEAR, *OTHERS)
LOCAL_NS, PAIR_NS, GLOBAL_NS, FAR_NS = "repl_local", "repl_pair", "repl_global", "repl_far"
FAR_SYNC_NS = "repl_far_sync"  # min_regions_acked 2, at the source and behind the delay
SYNC_SAMPLES = 400  # synchronous Puts, and as many round trips of the network alone
SYNC_PACED_SAMPLES = 100  # fdatasyncs a one-way delay apart (4 s at 40 ms)
SYNC_WARMUP = 50  # of each, unmeasured
# The processes of the Put's floors (bench.sync_floor), shown in the sync phase's cores line.
FLOOR_PROCESSES = ("floor-far", "floor-proxy", "floor-serial", "floor-pipelined")
FLOOR_NODE_ID = "bench-sync-floor"  # the floor servers' certificate (one for all three)
SYNC_SEED = 1  # the order of each round's calls
# The round trip's payload: about a Put's request, which is what crosses the delay.
PING_BYTES = 512
PROXY_READY = "proxy listening on "
PROXY_LATENESS = "proxy lateness ms:"
STAGE_METRIC = "domicile_replication_stage_seconds"
LOOP_LAG_METRIC = "domicile_event_loop_lag_sampled_seconds"
RPC_LATENCY_METRIC = "domicile_rpc_latency_seconds"
RECONNECTS_METRIC = "domicile_replication_reconnects_total"
ENTROPY_ROUNDS_METRIC = "domicile_antientropy_rounds_total"
ENTROPY_COMPARED_METRIC = "domicile_antientropy_keys_compared_total"
STAGES = ("ship", "arrive", "check", "seal", "audit", "commit")
WARMUP_WRITES = 50
BATCH_RECORDS = 50
PROFILE_RATE_HZ = 199
PROFILE_TOP = 12
# Frames where a thread waits rather than works (py-spy's idle detection misses some of them):
# left out of the shares, which are of the samples where the process was doing something.
IDLE_FRAMES = frozenset({"select", "wait", "_worker", "run", "_wait_for_tstate_lock", "sleep", "get", "poll"})

# Targets (issue text of the write path work, section 3).
LAG_P99_MS_MAX = 100.0
BATCH_LAG_P99_MS_MAX = 150.0
GLOBAL_LAG_P99_MS_MAX = 150.0
DELAYED_SLACK_MS = 50.0
SYNC_SLACK_MS = 10.0  # synchronous Put p99 <= 2 d + this
PACED_SHARE_MIN = 0.995
# Before a phase is measured, the cluster settles: every node's CPU over a window stays under
# this many cores (an idle node takes about 0.02: heartbeats, the digest trees' follow loop).
SETTLE_WINDOW_S = 1.0
SETTLE_CORES_MAX = 0.05
SETTLE_TIMEOUT_S = 120.0


def cluster_config() -> dict[str, Any]:
    def ns(name: str, regions: tuple[str, ...]) -> dict[str, Any]:
        return {"name": name, "regions": list(regions), "conflict_mode": "lww", "owner": CLIENT}

    return {
        "policy_version": "bench-replication-1",
        "regions": [{"name": r, "country": c, "jurisdiction": "EU"} for r, c in COUNTRIES.items()],
        "namespaces": [
            ns(LOCAL_NS, (SOURCE,)),
            ns(PAIR_NS, (SOURCE, NEAR)),
            ns(GLOBAL_NS, GLOBAL_REGIONS),
            ns(FAR_NS, (SOURCE, FAR)),
            ns(FAR_SYNC_NS, (SOURCE, FAR)) | {"min_regions_acked": 2},
        ],
        "coordinator": {"heartbeat_interval_ms": 500, "missed_heartbeats_max": 6},
    }


@dataclass(frozen=True)
class Options:
    quick: bool
    out: Path
    seconds: float
    rate: float
    batch_rate: float
    delay_ms: float
    value_bytes: int
    profile: Path | None
    keep_tmp: bool
    skip: frozenset[str]


PHASES = ("local", "pair", "batch", "global", "delayed", "sync")


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 s per phase instead of 10")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--seconds", type=float, help="paced writing per phase (10 s; quick 3 s)")
    p.add_argument("--rate", type=float, default=1000.0, help="paced single-record writes/s (1000)")
    p.add_argument("--batch-rate", type=float, default=5000.0, help="paced records/s in batches (5000)")
    p.add_argument("--delay-ms", type=float, default=50.0, help="one-way delay of the delayed link (50)")
    p.add_argument("--value-bytes", type=int, default=256, help="value size (256)")
    p.add_argument("--profile", type=Path, help="py-spy the source and target into this directory")
    p.add_argument("--skip", action="append", default=[], choices=PHASES, help="leave a phase out")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (data and logs)")
    a = p.parse_args(argv)
    seconds = a.seconds if a.seconds is not None else (3.0 if a.quick else 10.0)
    if not 0 < seconds <= 600 or not 1 <= a.rate <= 100_000 or not 1 <= a.batch_rate <= 1_000_000:
        p.error("--seconds must be in (0, 600], --rate in [1, 100000], --batch-rate in [1, 1000000]")
    if not 0 <= a.delay_ms <= 10_000 or not 1 <= a.value_bytes <= 1 << 20:
        p.error("--delay-ms must be 0 to 10000 and --value-bytes 1 to 1 MiB")
    return Options(
        a.quick, a.out, seconds, a.rate, a.batch_rate, a.delay_ms, a.value_bytes, a.profile,
        a.keep_tmp, frozenset(a.skip),
    )  # fmt: skip


@dataclass
class PhaseResult:
    name: str
    requested_rate: float
    records: int
    errors: int
    achieved_rate: float
    # Lag p50/p99 in ms per target node id (the p99 interpolated inside its bucket).
    lag_ms: dict[str, tuple[float, float]]
    # CPU microseconds per record written, per process name (source, each target, client).
    cpu_us_per_record: dict[str, float]
    cores: dict[str, float]
    writes_as: str = "Put"
    # Where the lag went (node.replication.stages): per slowest link, stage -> (p50, p99) ms.
    stages_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    profile_top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    # Failed writes by gRPC status code (a source that falls behind refuses streams, and calls
    # past their deadline may still commit).
    errors_by_code: dict[str, int] = field(default_factory=dict)
    # Change-log entries the source committed over the phase (writes whose caller gave up
    # included), and its links' reconnects meanwhile.
    source_committed: int = 0
    source_reconnects: int = 0
    # Anti-entropy rounds the cluster's nodes ran meanwhile and the keys they compared.
    entropy_rounds: int = 0
    entropy_keys_compared: int = 0
    # On the slowest link: the batches with records the source wrote (`ship`) and the applies
    # the target ran (`arrive`): records per message and per commit.
    stage_counts: dict[str, int] = field(default_factory=dict)
    # With several links: per target, stage -> p99 ms, to tell a stall at the source (every
    # link's `ship`) from one target's (its `commit`, or its `arrive` alone).
    link_stages_p99: dict[str, dict[str, float]] = field(default_factory=dict)
    # The source's event-loop lag over the phase, (p50, p99) ms: a stall there holds back every
    # Put the client has sent meanwhile.
    source_loop_lag_ms: tuple[float, float] | None = None
    # The source's own time per call of the writes (p50, p99) ms: past HTTP/2's 256 streams of
    # one connection in flight (a quarter second at 1,000/s), the client's further calls are
    # refused.
    source_call_ms: tuple[float, float] | None = None
    # Seconds the cluster took to settle before the phase (work left by the phases before it),
    # and the cores the nodes outside the phase used during it (on a machine of its own, a node
    # does not share the phase's cores).
    settle_s: float = 0.0
    # The lag histogram's observations over the phase, per target node id: whether the p99 is
    # within a target on a bucket edge is counted from it exactly (bench.stats.p99_within).
    lag_hist: dict[str, Histogram] = field(default_factory=dict)
    others_cores: float = 0.0


def _proxy_ready_pattern() -> Any:
    return re.compile(re.escape(PROXY_READY) + r"(\S+)")


class ReplicationBench:
    def __init__(self, opts: Options, root: Path) -> None:
        self.opts = opts
        self.root = root
        (root / "logs").mkdir()
        self.children = Children(root / "logs", cwd=root)
        self.cluster = BenchCluster(root, self.children)
        # The cluster of these figures, not the main benchmark's.
        self.cluster.config_path.write_text(yaml.safe_dump(cluster_config(), sort_keys=False))
        self.value = b"v" * opts.value_bytes
        self.nodes: dict[str, NodeHandle] = {}
        self.results: list[PhaseResult] = []
        # Latencies of the synchronous Puts (ms), when the sync phase ran.
        self.sync_ms: list[float] | None = None
        self.sync_stages_ms: dict[str, tuple[float, float]] = {}
        # Round trips (ms) of the emulated network alone, made in turn with the Puts.
        self.sync_rtt_ms: list[float] = []
        # What the machine took during the sync phase's calls, and the cores each process used.
        self.sync_machine: machine.Share | None = None
        self.sync_cores: dict[str, float] = {}
        # The event-loop lag each end of the synchronous link saw during those calls.
        self.sync_loop_lag: dict[str, Histogram] = {}
        self.sync_fdatasync_ms: list[float] = []
        # The same, each after a pause of the one-way delay: the pace of the calls' commits.
        self.sync_fdatasync_paced_ms: list[float] = []
        self.ping_address = ""
        # The Put's floors (bench.sync_floor), made in turn with the Puts: by how the origin
        # makes a record durable ("serial": before shipping it, as a node does; "pipelined":
        # while it travels), each call's latency (ms); and the floors' origin addresses.
        self.sync_floor_ms: dict[str, list[float]] = {}
        self.floor_addresses: dict[str, str] = {}

    async def start(self) -> None:
        await self.cluster.start_coordinator()
        far_port = free_port()
        proxy = await self.children.start_daemon(
            "proxy",
            ["-m", "bench.delay_proxy", "--target", f"127.0.0.1:{far_port}",
             "--delay-ms", str(self.opts.delay_ms)],
            _proxy_ready_pattern(),
        )  # fmt: skip
        phases.progress(f"starting {len(COUNTRIES)} nodes in {self.root}")
        handles = await asyncio.gather(
            *(self.cluster.start_node(r) for r in (SOURCE, NEAR, *OTHERS)),
            self.cluster.start_node(FAR, listen_port=far_port, advertise=proxy.group(1)),
        )
        self.nodes = {h.node_id: h for h in handles}
        if "sync" not in self.opts.skip:
            # The baseline of the synchronous Puts: a bare TCP echo behind a proxy of its own with
            # the same delay, so that a round trip crosses the same emulated network.
            echo = await self.children.start_daemon(
                "tcp-echo", ["-m", "bench.tcp_echo"], re.compile(re.escape(tcp_echo.READY) + r"(\S+)")
            )
            ping = await self.children.start_daemon(
                "ping-proxy",
                ["-m", "bench.delay_proxy", "--target", echo.group(1), "--delay-ms", str(self.opts.delay_ms)],
                _proxy_ready_pattern(),
            )
            self.ping_address = ping.group(1)
            await self._start_floors()

    async def _start_floors(self) -> None:
        """The far floor server behind a delay proxy of its own, and an origin of each kind."""
        ready = re.compile(re.escape(sync_floor.READY) + r"(\S+)")
        # Mutual TLS on every hop, as between the nodes and from the client (bench.cluster).
        tls = self.cluster.server_tls_args(FLOOR_NODE_ID)
        far = await self.children.start_daemon("floor-far", ["-m", "bench.sync_floor", "far", *tls], ready)
        proxy = await self.children.start_daemon(
            "floor-proxy",
            ["-m", "bench.delay_proxy", "--target", far.group(1), "--delay-ms", str(self.opts.delay_ms)],
            _proxy_ready_pattern(),
        )
        for kind, extra in (("serial", ["--serial"]), ("pipelined", [])):
            origin = await self.children.start_daemon(
                f"floor-{kind}",
                ["-m", "bench.sync_floor", "origin", "--far", proxy.group(1), *extra, *tls],
                ready,
            )
            self.floor_addresses[kind] = origin.group(1)

    def _pid(self, node_id: str) -> int:
        return self.children.children[f"node-{node_id}"].process.pid

    async def phase(
        self,
        name: str,
        namespace: str,
        targets: tuple[str, ...],
        call: Call,
        calls_per_s: float,
        records_per_call: int,
        writes_as: str = "Put",
        profile: tuple[str, ...] = (),
    ) -> PhaseResult:
        opts = self.opts
        source = self.nodes[SOURCE]
        for t in targets:
            await wait_linked(source, self.nodes[t])
        await sequential_ms(
            put_call(source.channel, namespace, f"{name}-warmup", self.value), WARMUP_WRITES, 0
        )
        for t in targets:
            await wait_caught_up(source, self.nodes[t])
        settle_s = await self._settle(name)
        labels = {t: {"source": SOURCE, "target": t} for t in targets}
        before = {t: await self.nodes[t].histogram(LAG_METRIC, labels[t]) for t in targets}
        stages_before = {t: await self._stage_histograms(t) for t in targets}
        lsn_before = (await source.status()).last_lsn
        reconnects_before = counter_total(await source.scrape(), RECONNECTS_METRIC)
        entropy_before = await self._entropy_counts()
        source_series = {LOOP_LAG_METRIC: {}, RPC_LATENCY_METRIC: {"method": writes_as}}
        source_before = {m: await source.histogram(m, labels) for m, labels in source_series.items()}
        errors_by_code: collections.Counter[str] = collections.Counter()
        cpu_before = self.children.cpu_snapshot()
        wall_started = time.perf_counter()
        spies = await self._start_profiles(name, profile)
        writes = await phases.paced(
            self.children, name, counting_errors(call, errors_by_code), calls_per_s, opts.seconds
        )
        for t in targets:
            await wait_caught_up(source, self.nodes[t])
        cpu_after = self.children.cpu_snapshot()
        wall = time.perf_counter() - wall_started
        tops = await self._finish_profiles(name, spies)
        source_committed = (await source.status()).last_lsn - lsn_before
        reconnects = counter_total(await source.scrape(), RECONNECTS_METRIC) - reconnects_before
        entropy_after = await self._entropy_counts()
        source_ms = {
            m: quantiles_ms(source_before[m], await source.histogram(m, labels))
            for m, labels in source_series.items()
        }
        records = writes.completed * records_per_call
        lag: dict[str, tuple[float, float]] = {}
        lag_hist: dict[str, Histogram] = {}
        for t in targets:
            after = await self.nodes[t].histogram(LAG_METRIC, labels[t])
            if after is None:
                raise RuntimeError(f"{t} exports no {LAG_METRIC} series for {labels[t]}")
            delta = lag_hist[t] = after.minus(before[t])
            lag[t] = (delta.quantile(0.50) * 1000, delta.quantile(0.99) * 1000)
        stages_ms: dict[str, tuple[float, float]] = {}
        stage_counts: dict[str, int] = {}
        link_stages_p99: dict[str, dict[str, float]] = {}
        if len(targets) > 1:
            for t in targets:
                per_link = stage_quantiles(stages_before[t], await self._stage_histograms(t))
                link_stages_p99[t] = {stage: p99 for stage, (_, p99) in per_link.items()}
        if targets:
            slowest = max(targets, key=lambda t: lag[t][1])
            stages_after = await self._stage_histograms(slowest)
            stages_ms = stage_quantiles(stages_before[slowest], stages_after)
            stage_counts = {
                stage: round(stages_after[stage].minus(stages_before[slowest].get(stage)).count)
                for stage in ("ship", "arrive")
                if stage in stages_after
            }
        # The delay proxy too: it forwards every byte of the delayed link on the same cores.
        names = {f"node-{n}": n for n in (SOURCE, *targets)} | {"bench client": "client", "proxy": "proxy"}
        cpu_us = {
            short: (cpu_after[proc] - cpu_before[proc]) * 1e6 / max(records, 1)
            for proc, short in names.items()
            if proc in cpu_after and proc in cpu_before
        }
        cores = {
            short: round((cpu_after[proc] - cpu_before[proc]) / wall, 2)
            for proc, short in names.items()
            if proc in cpu_after and proc in cpu_before
        }
        others = [p for p in self._node_processes() if p not in names and p in cpu_after and p in cpu_before]
        others_cores = sum(cpu_after[p] - cpu_before[p] for p in others) / wall
        result = PhaseResult(
            name,
            calls_per_s * records_per_call,
            records,
            writes.errors,
            writes.rate * records_per_call,
            lag,
            cpu_us,
            cores,
            writes_as,
            stages_ms,
            tops,
            errors_by_code=dict(errors_by_code),
            source_committed=source_committed,
            source_reconnects=round(reconnects),
            entropy_rounds=round(entropy_after[0] - entropy_before[0]),
            entropy_keys_compared=round(entropy_after[1] - entropy_before[1]),
            stage_counts=stage_counts,
            link_stages_p99=link_stages_p99,
            source_loop_lag_ms=source_ms[LOOP_LAG_METRIC],
            source_call_ms=source_ms[RPC_LATENCY_METRIC],
            settle_s=settle_s,
            lag_hist=lag_hist,
            others_cores=round(others_cores, 2),
        )
        if writes.errors:
            phases.progress(f"{name}: {writes.errors} failed writes; first: {writes.first_error}")
        self.results.append(result)
        return result

    def _node_processes(self) -> list[str]:
        return [f"node-{n}" for n in self.nodes]

    async def _settle(self, name: str) -> float:
        """Waits until no node works any more on what the phases before this one left (the
        digest trees recomputing a batch phase's keys): until each
        node's CPU over SETTLE_WINDOW_S is under SETTLE_CORES_MAX, at most SETTLE_TIMEOUT_S.
        Seven nodes share the bench's cores, where each region has machines of its own: the
        batch phase's target, still recomputing its 50,000 keys' digests two phases later, took
        0.15 cores from the delayed phase, whose lag p99 read 141-160 ms after the other phases
        against 99-107 ms alone. Returns the seconds waited."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        processes = self._node_processes()
        while True:
            before = self.children.cpu_snapshot()
            await asyncio.sleep(SETTLE_WINDOW_S)
            after = self.children.cpu_snapshot()
            busy = busy_processes(before, after, processes, SETTLE_WINDOW_S)
            waited = loop.time() - started
            if not busy:
                return waited
            if waited >= SETTLE_TIMEOUT_S:
                cores = ", ".join(f"{p} {c:.2f}" for p, c in sorted(busy.items()))
                phases.progress(
                    f"{name}: measured although nodes are still busy after {waited:.0f} s ({cores})"
                )
                return waited

    async def _entropy_counts(self) -> tuple[float, float]:
        """Anti-entropy rounds run and keys compared so far, summed over every node (a round
        costs the peer it is run with too, the source among them)."""
        rounds = compared = 0.0
        for node in self.nodes.values():
            text = await node.scrape()
            rounds += counter_total(text, ENTROPY_ROUNDS_METRIC)
            compared += counter_total(text, ENTROPY_COMPARED_METRIC)
        return rounds, compared

    async def _stage_histograms(self, target: str) -> dict[str, Histogram]:
        """The stage histograms of the link SOURCE -> target: `ship` from the source, the apply
        stages from the target (node.replication.stages)."""
        link = f"{SOURCE}->{target}"
        found: dict[str, Histogram] = {}
        for stage in STAGES:
            node = self.nodes[SOURCE if stage == "ship" else target]
            hist = await node.histogram(STAGE_METRIC, {"link": link, "stage": stage})
            if hist is not None:
                found[stage] = hist
        return found

    async def _start_profiles(self, name: str, node_ids: tuple[str, ...]) -> dict[str, tuple[Any, Path]]:
        if self.opts.profile is None or not node_ids:
            return {}
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.opts.profile.mkdir(parents=True, exist_ok=True)
        spies: dict[str, tuple[Any, Path]] = {}
        for node_id in node_ids:
            out = self.opts.profile / f"{name}-{node_id}.txt"
            process = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(self._pid(node_id)), "--rate", str(PROFILE_RATE_HZ),
                "--format", "raw", "--output", str(out), "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            spies[node_id] = (process, out)
        return spies

    async def _finish_profiles(
        self, name: str, spies: dict[str, tuple[Any, Path]]
    ) -> dict[str, list[tuple[str, float]]]:
        tops: dict[str, list[tuple[str, float]]] = {}
        for node_id, (process, out) in spies.items():
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(process.wait(), 30)
            if out.exists():
                tops[node_id] = top_functions(out.read_text())
        return tops

    async def execute(self) -> None:
        opts = self.opts
        source = self.nodes[SOURCE].channel
        pair = (SOURCE, NEAR)
        if "local" not in opts.skip:
            await self.phase(
                "local", LOCAL_NS, (), put_call(source, LOCAL_NS, "local", self.value), opts.rate, 1
            )
        if "pair" not in opts.skip:
            await self.phase(
                "pair", PAIR_NS, (NEAR,), put_call(source, PAIR_NS, "pair", self.value), opts.rate, 1,
                profile=pair,
            )  # fmt: skip
        if "batch" not in opts.skip:
            call, how = batch_call(self.nodes[SOURCE], PAIR_NS, "batch", self.value)
            await self.phase(
                "batch", PAIR_NS, (NEAR,), call, opts.batch_rate / BATCH_RECORDS, BATCH_RECORDS, how,
                profile=(NEAR,),
            )  # fmt: skip
        if "global" not in opts.skip:
            await self.phase(
                "global",
                GLOBAL_NS,
                GLOBAL_REGIONS[1:],
                put_call(source, GLOBAL_NS, "global", self.value),
                opts.rate,
                1,
                profile=(SOURCE,),
            )
        if "delayed" not in opts.skip:
            await self.phase(
                "delayed", FAR_NS, (FAR,), put_call(source, FAR_NS, "far", self.value), opts.rate, 1,
                profile=(SOURCE, FAR),
            )  # fmt: skip
        if "sync" not in opts.skip:
            await wait_linked(self.nodes[SOURCE], self.nodes[FAR])
            await self._settle("sync")
            host, _, port = self.ping_address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            payload = b"p" * PING_BYTES

            async def round_trip(_: int) -> None:
                writer.write(payload)
                await reader.readexactly(PING_BYTES)

            # The Puts, the round trips and the Put's floors in turn, so that the moments of a
            # shared machine fall on all alike; what the machine took and what each process used
            # meanwhile. A floor call carries the bytes of a Put's request.
            record = put_request(FAR_SYNC_NS, "sync-floor", self.value).SerializeToString()
            floors = {
                kind: self.cluster.dialer.channel(address) for kind, address in self.floor_addresses.items()
            }
            calls = [
                round_trip,
                put_call(source, FAR_SYNC_NS, "sync", self.value),
                *(floor_call(ch, record) for ch in floors.values()),
            ]
            rng = random.Random(SYNC_SEED)
            ends = {"source": self.nodes[SOURCE], "far": self.nodes[FAR]}
            phases.progress(
                f"sync: Puts acknowledged by 2 regions over a {opts.delay_ms:.0f} ms one-way delay, in "
                f"turn with round trips of {PING_BYTES} bytes through an identical delay proxy: "
                f"{SYNC_SAMPLES} of each"
            )
            try:
                # The warm-up first: every window below holds the measured calls alone.
                await interleaved_ms(calls, 0, rng, warmup=SYNC_WARMUP)
                before = await self._stage_histograms(FAR)
                lag_before = {end: await node.histogram(LOOP_LAG_METRIC, {}) for end, node in ends.items()}
                at, cpu_before = machine.sample(), self.children.cpu_snapshot()
                self.sync_rtt_ms, self.sync_ms, *floor_ms = await interleaved_ms(
                    calls, SYNC_SAMPLES, rng, warmup=0
                )
                self.sync_floor_ms = dict(zip(floors, floor_ms, strict=True))
                end, cpu_after = machine.sample(), self.children.cpu_snapshot()
            finally:
                for ch in floors.values():
                    await ch.close()
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            self.sync_stages_ms = stage_quantiles(before, await self._stage_histograms(FAR))
            self.sync_machine = machine.between(at, end)
            used = {p: cpu_after[p] - cpu_before[p] for p in cpu_after.keys() & cpu_before.keys()}
            self.sync_cores = sync_cores(used, end.at - at.at, self._node_processes())
            for name, node in ends.items():
                after = await node.histogram(LOOP_LAG_METRIC, {})
                if after is not None:
                    self.sync_loop_lag[name] = after.minus(lag_before[name])
            # The floor of the two commits every synchronous Put waits for in series (the
            # source's, then the far node's), measured after the calls on the far node's disk.
            self.sync_fdatasync_ms = await asyncio.to_thread(
                phases.fdatasync_ms, self.nodes[FAR].data_dir, SYNC_SAMPLES, len(self.value)
            )
            # During the calls the disk synced about once per one-way delay (each call's commits
            # are a delay apart: the source's, then the far node's; the floors' alike), and a
            # disk idle that long syncs slower: measured at that pace too.
            self.sync_fdatasync_paced_ms = await asyncio.to_thread(
                phases.fdatasync_ms,
                self.nodes[FAR].data_dir,
                SYNC_PACED_SAMPLES,
                len(self.value),
                opts.delay_ms / 1000.0,
            )


def floor_call(ch: grpc.aio.Channel, record: bytes) -> Call:
    """A call to a floor's origin (bench.sync_floor): answered once two regions hold `record`."""
    put = ch.unary_unary(sync_floor.PUT_METHOD, request_serializer=None, response_deserializer=None)

    async def call(_: int) -> object:
        return await put(record, timeout=RPC_DEADLINE_S)

    return call


def floor_figures(sync_ms: list[float], floor_ms: dict[str, list[float]]) -> list[Figure]:
    """The Put's floors (bench.sync_floor) and the Put against them, p50 and p99."""
    how = {"serial": "durable at the origin, then shipped", "pipelined": "shipped, durable meanwhile"}
    out: list[Figure] = []
    for kind, ms in floor_ms.items():
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            out.append(
                Figure(
                    f"sync_put_{name}_vs_floor_{kind}_ms",
                    f"sync: Put {name} against its floor ({how.get(kind, kind)})",
                    percentile(sync_ms, q), "ms", percentile(ms, q), f"floor {name} (in turn)",
                )
            )  # fmt: skip
    return out


def sync_cores(cpu_s: dict[str, float], wall_s: float, nodes: list[str]) -> dict[str, float]:
    """The cores each process used over `wall_s`: the two ends of the synchronous link, the bench
    client, the proxies, and the other nodes summed (idle, each costs a little)."""
    if wall_s <= 0:
        return {}
    ends = {f"node-{SOURCE}": "source", f"node-{FAR}": "far"}
    helpers = ("bench client", "proxy", "ping-proxy", "tcp-echo", "coordinator", *FLOOR_PROCESSES)
    shown = ends | {p: p for p in helpers}
    cores = {short: round(cpu_s[p] / wall_s, 2) for p, short in shown.items() if p in cpu_s}
    others = sum(cpu_s[p] for p in nodes if p in cpu_s and p not in ends)
    cores["other nodes"] = round(others / wall_s, 2)
    return cores


def fdatasync_line(back_to_back_ms: list[float], paced_ms: list[float], delay_ms: float) -> str:
    """The floor of the two commits a synchronous Put waits for in series, back to back and at
    the pace of the calls' commits (one per one-way delay), p50/p99."""

    def q(ms: list[float]) -> str:
        return f"{percentile(ms, 0.5):.2f}/{percentile(ms, 0.99):.2f}"

    paced = f"; one every {delay_ms:g} ms, the pace of the calls' commits: {q(paced_ms)}" if paced_ms else ""
    return (
        f"sync: fdatasync on the far node's disk after the calls, p50/p99 (ms): back to back "
        f"{q(back_to_back_ms)}{paced} (a synchronous Put waits for two commits in series: the "
        "source's, then the far node's)"
    )


def loop_lag_line(lag: Histogram) -> str:
    """How often a node's loop ran its lag timer late by more than a few edges of its buckets:
    a stall of the loop delays every call it serves by as much."""
    if lag.count <= 0:
        return "no samples"
    parts = []
    for edge_s in (0.005, 0.01, 0.02, 0.05):
        within = lag.share_within(edge_s)
        if within is not None:
            parts.append(f"> {edge_s * 1000:g} ms {round((1 - within) * lag.count)}")
    return f"{lag.count:.0f} samples; " + ", ".join(parts)


def busy_processes(
    before: dict[str, float], after: dict[str, float], processes: list[str], window_s: float
) -> dict[str, float]:
    """The cores each of `processes` used between two CPU snapshots `window_s` apart, for those
    that used more than SETTLE_CORES_MAX (a process missing from either snapshot is left out)."""
    cores = {p: (after[p] - before[p]) / window_s for p in processes if p in after and p in before}
    return {p: c for p, c in cores.items() if c > SETTLE_CORES_MAX}


def counting_errors(call: Call, by_code: collections.Counter[str]) -> Call:
    """`call`, counting its failures by status code into `by_code`."""

    async def counted(i: int) -> object:
        try:
            return await call(i)
        except grpc.aio.AioRpcError as exc:
            by_code[exc.code().name] += 1
            raise

    return counted


def counter_total(text: str, name: str) -> float:
    """The sum of a counter's samples over all its labels, from a /metrics page."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def quantiles_ms(before: Histogram | None, after: Histogram | None) -> tuple[float, float] | None:
    """(p50, p99) in ms of what a histogram observed between two scrapes; None when nothing."""
    if after is None:
        return None
    delta = after.minus(before)
    if delta.count <= 0:
        return None
    return delta.quantile(0.50) * 1000, delta.quantile(0.99) * 1000


def stage_quantiles(
    before: dict[str, Histogram], after: dict[str, Histogram]
) -> dict[str, tuple[float, float]]:
    """Per stage, (p50, p99) in ms of what was observed between the two scrapes."""
    out: dict[str, tuple[float, float]] = {}
    for stage, hist in after.items():
        delta = hist.minus(before.get(stage))
        if delta.count > 0:
            out[stage] = (delta.quantile(0.50) * 1000, delta.quantile(0.99) * 1000)
    return out


def batch_call(node: NodeHandle, namespace: str, prefix: str, value: bytes) -> tuple[Call, str]:
    """One call writes BATCH_RECORDS records: with PutBatch where the node's API has it,
    otherwise as that many concurrent Puts."""
    stub = spb_grpc.StorageNodeServiceStub(node.channel)
    request_type = getattr(spb, "PutBatchRequest", None)
    put_batch = getattr(stub, "PutBatch", None)
    if request_type is not None and put_batch is not None:

        async def batched(i: int) -> object:
            request = request_type()
            for j in range(BATCH_RECORDS):
                request.puts.append(put_request(namespace, f"{prefix}-{i}-{j}", value))
            return await put_batch(request, timeout=RPC_DEADLINE_S)

        return batched, "PutBatch"

    async def concurrent(i: int) -> object:
        return await asyncio.gather(
            *(
                stub.Put(put_request(namespace, f"{prefix}-{i}-{j}", value), timeout=RPC_DEADLINE_S)
                for j in range(BATCH_RECORDS)
            )
        )

    return concurrent, f"{BATCH_RECORDS} concurrent Puts"


def top_functions(collapsed: str, top: int = PROFILE_TOP) -> list[tuple[str, float]]:
    """The functions with the largest share of samples in py-spy's collapsed stacks, by time
    spent in the function itself (its own frame on top of the stack)."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frame = stack.rsplit(";", 1)[-1]
        # "function (file.py:line)": per function, not per line.
        name, _, where = frame.partition(" (")
        if name.rsplit(".", 1)[-1] in IDLE_FRAMES:
            continue
        path = where.rsplit(":", 1)[0]
        for marker in ("/site-packages/", "/lib/python3"):
            if marker in path:
                path = path.split(marker, 1)[1]
        path = path.removeprefix(str(REPO_ROOT) + "/")
        own[f"{name} ({path})"] += count
        total += count
    if not total:
        return []
    return [(name, 100.0 * n / total) for name, n in own.most_common(top)]


def lag_p99_figures(r: PhaseResult, slowest: str, limit: float, where: str) -> list[Figure]:
    """The phase's lag p99 on its slowest link against `limit` ms; when the limit is a bucket
    edge of the lag histogram, whether it is met is counted exactly, on the link with the
    fewest records within it, and that share is a figure of its own."""
    judged = {t: p99_within(h, limit) for t, h in r.lag_hist.items()}
    shares = {t: share for t, (_, share) in judged.items() if share is not None}
    met = all(ok for ok, _ in judged.values()) if judged else r.lag_ms[slowest][1] <= limit
    label = f"{r.name}: lag p99{where}" + (" (interpolated in its bucket)" if shares else "")
    out = [
        Figure(
            f"{r.name}_lag_p99_ms", label, r.lag_ms[slowest][1], "ms",
            target=f"<= {limit:.0f} ms", met=met,
        )
    ]  # fmt: skip
    if shares:
        worst = min(shares, key=lambda t: shares[t])
        link = f" (link to {worst})" if len(shares) > 1 else ""
        out.append(
            Figure(
                f"{r.name}_lag_within_pct", f"{r.name}: records applied within {limit:.0f} ms{link}",
                100 * shares[worst], "%", target=">= 99% (p99 within)", met=shares[worst] >= 0.99,
            )
        )  # fmt: skip
    return out


def figures(
    results: list[PhaseResult],
    opts: Options,
    sync_ms: list[float] | None = None,
    sync_rtt_ms: list[float] | None = None,
    sync_floor_ms: dict[str, list[float]] | None = None,
) -> list[Figure]:
    by = {r.name: r for r in results}
    out: list[Figure] = []
    if sync_ms:
        limit = 2 * opts.delay_ms + SYNC_SLACK_MS
        p99 = percentile(sync_ms, 0.99)
        out.append(
            Figure("sync_put_p50_ms", "sync: Put p50 (min_regions_acked 2)", percentile(sync_ms, 0.5), "ms")
        )
        out.append(
            Figure(
                "sync_put_p99_ms", f"sync: Put p99 (one-way delay {opts.delay_ms:.0f} ms, as set)", p99, "ms",
                target=f"<= {limit:.0f} ms (2 d + {SYNC_SLACK_MS:.0f})", met=p99 <= limit,
            )
        )  # fmt: skip
    if sync_ms and sync_rtt_ms:
        # The delay as the emulated network gave it in this run: a round trip through the same
        # kind of proxy, made in turn with the Puts.
        rtt50, rtt99 = percentile(sync_rtt_ms, 0.5), percentile(sync_rtt_ms, 0.99)
        p99 = percentile(sync_ms, 0.99)
        out.append(Figure("sync_rtt_p50_ms", "sync: the network's round trip alone, p50", rtt50, "ms"))
        out.append(
            Figure(
                "sync_put_p99_vs_rtt_ms", "sync: Put p99 against the network's round trip p99", p99, "ms",
                rtt99, "round trip p99 (same run)",
                target=f"<= round trip + {SYNC_SLACK_MS:.0f} ms", met=p99 <= rtt99 + SYNC_SLACK_MS,
            )
        )  # fmt: skip
    if sync_ms and sync_floor_ms:
        out.extend(floor_figures(sync_ms, sync_floor_ms))
    local = by.get("local")
    base_us = local.cpu_us_per_record.get(SOURCE) if local else None
    if local:
        out.append(
            Figure("local_rate", "local: achieved (Put, no replica)", local.achieved_rate, "records/s")
        )
        out.append(Figure("local_source_cpu_us", "source CPU per Put, no replica (baseline)", base_us, "us"))
    for r in results:
        if r.name == "local":
            continue
        floor = PACED_SHARE_MIN * r.requested_rate
        out.append(
            Figure(
                f"{r.name}_rate", f"{r.name}: achieved ({r.writes_as})", r.achieved_rate, "records/s",
                target=f">= {floor:,.0f} (paced {r.requested_rate:,.0f})", met=r.achieved_rate >= floor,
            )
        )  # fmt: skip
        slowest = max(r.lag_ms, key=lambda t: r.lag_ms[t][1])
        limit = {
            "pair": LAG_P99_MS_MAX,
            "batch": BATCH_LAG_P99_MS_MAX,
            "global": GLOBAL_LAG_P99_MS_MAX,
            "delayed": opts.delay_ms + DELAYED_SLACK_MS,
        }[r.name]
        where = f" (slowest link, to {slowest})" if len(r.lag_ms) > 1 else ""
        out.append(Figure(f"{r.name}_lag_p50_ms", f"{r.name}: lag p50{where}", r.lag_ms[slowest][0], "ms"))
        out.extend(lag_p99_figures(r, slowest, limit, where))
        src = r.cpu_us_per_record.get(SOURCE)
        out.append(
            Figure(
                f"{r.name}_source_cpu_us", f"{r.name}: source CPU per record", src, "us",
                baseline=base_us if r.writes_as == "Put" else None,
                baseline_label="no replica",
            )
        )  # fmt: skip
        if src is not None and base_us is not None and r.writes_as == "Put":
            links = len(r.lag_ms)
            out.append(
                Figure(
                    f"{r.name}_source_replication_cpu_us",
                    f"{r.name}: source CPU per record per link for replication",
                    (src - base_us) / links,
                    "us",
                )
            )
        targets = [t for t in r.lag_ms if t in r.cpu_us_per_record]
        if targets:
            mean = sum(r.cpu_us_per_record[t] for t in targets) / len(targets)
            out.append(Figure(f"{r.name}_target_cpu_us", f"{r.name}: target CPU per record", mean, "us"))
    for r in results:
        loop_p50: float | None = r.source_loop_lag_ms[0] if r.source_loop_lag_ms else None
        loop_p99: float | None = r.source_loop_lag_ms[1] if r.source_loop_lag_ms else None
        out.append(
            Figure(f"{r.name}_source_loop_lag_p50_ms", f"{r.name}: source event-loop lag p50", loop_p50, "ms")
        )
        out.append(
            Figure(f"{r.name}_source_loop_lag_p99_ms", f"{r.name}: source event-loop lag p99", loop_p99, "ms")
        )
    return out


def profile_lines(results: list[PhaseResult]) -> str:
    lines: list[str] = []
    for r in results:
        for node_id, top in r.profile_top.items():
            role = "source" if node_id == SOURCE else "target"
            lines.append(f"py-spy, {r.name}, {role} {node_id} (share of busy samples, own frame):")
            lines += [f"  {share:5.1f}%  {name}" for name, share in top]
    return "\n".join(lines)


async def run(opts: Options) -> int:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="domicile-bench-repl-"))
    bench = ReplicationBench(opts, root)
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await bench.start()
        await bench.execute()
    except BaseException:
        print(f"benchmark stopped; process logs are in {root / 'logs'}", file=sys.stderr)
        bench.children.kill_all_now()
        raise
    finally:
        await bench.cluster.close()
        await bench.children.stop_all()
    proxy_lateness = last_proxy_lateness(root / "logs" / "proxy.out")
    if not opts.keep_tmp:
        shutil.rmtree(root, ignore_errors=True)
    results = figures(bench.results, opts, bench.sync_ms, bench.sync_rtt_ms, bench.sync_floor_ms)
    meta = {
        "started": started_at.isoformat(),
        "seconds": round(time.monotonic() - started, 1),
        "options": {k: str(v) for k, v in asdict(opts).items()},
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        # The histograms' +Inf edge is not JSON; the figures carry what was read from them.
        "phases": [{k: v for k, v in asdict(r).items() if k != "lag_hist"} for r in bench.results],
        "sync_put_ms": bench.sync_ms,
        "sync_rtt_ms": bench.sync_rtt_ms,
        "sync_floor_ms": bench.sync_floor_ms,
        "sync_stages_ms": bench.sync_stages_ms,
        "sync_machine": bench.sync_machine.as_dict() if bench.sync_machine else None,
        "sync_cores": bench.sync_cores,
        "sync_fdatasync_ms": bench.sync_fdatasync_ms,
        "sync_fdatasync_paced_ms": bench.sync_fdatasync_paced_ms,
        "proxy_lateness": proxy_lateness,
    }
    write_json(opts.out, results, meta)
    print(table(results))
    print()
    for r in bench.results:
        cores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.cores.items()))
        print(
            f"cores during {r.name}: {cores}; other nodes {r.others_cores:.2f} "
            f"(settled in {r.settle_s:.0f} s)"
        )
        failed = ", ".join(f"{code} {n}" for code, n in sorted(r.errors_by_code.items())) or "none"
        print(
            f"  source committed {r.source_committed} entries for {r.records} acknowledged records; "
            f"failed writes: {failed}; link reconnects: {r.source_reconnects}; anti-entropy rounds "
            f"{r.entropy_rounds} ({r.entropy_keys_compared} keys compared)"
        )
        for what, ms in (("event-loop lag", r.source_loop_lag_ms), (f"{r.writes_as} call", r.source_call_ms)):
            if ms is not None:
                print(f"  source {what} p50/p99 (ms): {ms[0]:.1f}/{ms[1]:.1f}")
        if len(r.lag_ms) > 1:
            links = ", ".join(f"{t} {p99:.1f}" for t, (_, p99) in sorted(r.lag_ms.items()))
            print(f"  lag p99 per link (ms): {links}")
        for t, per_link in sorted(r.link_stages_p99.items()):
            parts = ", ".join(f"{k} {p99:.1f}" for k, p99 in per_link.items())
            print(f"  stages p99 (ms) to {t}: {parts}")
        if r.stages_ms:
            parts = ", ".join(f"{k} {p50:.1f}/{p99:.1f}" for k, (p50, p99) in r.stages_ms.items())
            print(f"  stages p50/p99 (ms, slowest link): {parts}")
        if r.stage_counts:
            per = ", ".join(f"{r.records / n:.1f} per {s}" for s, n in r.stage_counts.items() if n)
            print(f"  records per batch (slowest link): {per}")
    if bench.sync_stages_ms:
        parts = ", ".join(f"{k} {p50:.1f}/{p99:.1f}" for k, (p50, p99) in bench.sync_stages_ms.items())
        print(f"sync: stages p50/p99 (ms): {parts}")
    if bench.sync_cores:
        cores = ", ".join(f"{k} {v:.2f}" for k, v in bench.sync_cores.items())
        print(f"sync: cores during the calls: {cores}")
    if bench.sync_machine:
        print(f"sync: the machine during the calls: {bench.sync_machine.line()}")
    for name, lag in bench.sync_loop_lag.items():
        print(f"sync: {name} event-loop lag during the calls: {loop_lag_line(lag)}")
    if bench.sync_fdatasync_ms:
        print(fdatasync_line(bench.sync_fdatasync_ms, bench.sync_fdatasync_paced_ms, opts.delay_ms))
    if proxy_lateness:
        # What the delay proxy added past its delay (bench.delay_proxy), over the whole run.
        print(proxy_lateness)
    print(profile_lines(bench.results))
    print(f"results written to {opts.out}", file=sys.stderr)
    return 0


def last_proxy_lateness(out: Path) -> str:
    """The delay proxy's last lateness report (cumulative), or "" when it wrote none."""
    try:
        lines = out.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    reports = [line for line in lines if line.startswith(PROXY_LATENESS)]
    return reports[-1] if reports else ""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    opts = parse_args(argv)
    try:
        return asyncio.run(run(opts))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; every child process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
