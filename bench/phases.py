"""The measurements of one run. Each returns raw numbers; main.py turns them into figures."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.client import Call, sequential_ms
from bench.procs import Children
from domicile.errors import DomicileError
from domicile.hlc import HybridClock
from node.compliance.audit_log import AuditLog
from node.compliance.enforcer import Audit
from node.engine.base import Committed, LocalWrite
from node.engine.sqlite import SQLiteEngine

PROGRESS_EVERY_S = 2.0
PRELOAD_INFLIGHT = 64
PACED_INFLIGHT_MAX = 512
WORKER_READY_TIMEOUT_S = 60.0

_started = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _started:6.1f} s] {message}", file=sys.stderr, flush=True)


@asynccontextmanager
async def ticking(what: str, seconds: float) -> AsyncIterator[None]:
    """Prints a progress line every few seconds while a long phase runs."""
    started = time.monotonic()

    async def tick() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            progress(f"{what}: {time.monotonic() - started:.0f} of {seconds:.0f} s")

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()


class CpuMeter:
    """Cores each process used over a phase (CPU seconds / wall seconds), so that a reader sees
    whether the machine, not the code, set the figure."""

    def __init__(self, children: Children) -> None:
        self.children = children
        self.before = children.cpu_snapshot()
        self.started = time.perf_counter()

    def cores(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        after = self.children.cpu_snapshot()
        return {
            name: round((after[name] - self.before[name]) / wall, 2) for name in after if name in self.before
        }


# -- baselines ------------------------------------------------------------------------------


def fdatasync_ms(directory: Path, samples: int, record_bytes: int, pause_s: float = 0.0) -> list[float]:
    """Latency of appending `record_bytes` to a file and fdatasync-ing it (a WAL commit's floor),
    back to back, or with `pause_s` without I/O before each (a disk that has been idle a while
    can take several times longer to sync, so the pause of the commits being compared with
    matters). Blocks."""
    if pause_s < 0:
        raise ValueError(f"pause_s is {pause_s}; it must be 0 or more")
    path = directory / "fdatasync-probe.bin"
    sync = getattr(os, "fdatasync", os.fsync)
    payload = b"\x00" * record_bytes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(20):  # allocate the first blocks before measuring
            os.write(fd, payload)
            sync(fd)
        latencies: list[float] = []
        for _ in range(samples):
            if pause_s:
                time.sleep(pause_s)
            started = time.perf_counter_ns()
            os.write(fd, payload)
            sync(fd)
            latencies.append((time.perf_counter_ns() - started) / 1e6)
        return latencies
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


async def sequential(what: str, call: Call, samples: int) -> list[float]:
    progress(f"{what}: {samples} sequential calls")
    return await sequential_ms(call, samples)


# -- concurrent load -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    completed: int
    errors: int
    seconds: float
    first_error: str
    cpu_cores: dict[str, float] = field(default_factory=dict)
    # Growth of a server-side counter (a node's last LSN) per second over the same window.
    server_rate: float | None = None

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


async def concurrent_load(
    children: Children,
    *,
    name: str,
    address: str,
    method: str,
    namespace: str,
    value_bytes: int,
    procs: int,
    inflight: int,
    seconds: float,
    server_counter: Callable[[], Awaitable[int]] | None = None,
    tls_dir: Path | None = None,
    batch_records: int = 0,
) -> LoadResult:
    """`procs` worker processes with `inflight` calls outstanding each, started together.
    `server_counter` (e.g. the node's last LSN) is read when they start and when all are done."""
    workers = []
    try:
        for i in range(procs):
            worker = await children.start_worker(
                f"{name}-{i}",
                [
                    "-m",
                    "bench.load_worker",
                    "--address",
                    address,
                    "--method",
                    method,
                    "--namespace",
                    namespace,
                    "--key-prefix",
                    f"{name}-{i}",
                    "--value-bytes",
                    str(value_bytes),
                    "--inflight",
                    str(inflight),
                    "--seconds",
                    str(seconds),
                    *(("--tls-dir", str(tls_dir)) if tls_dir else ()),
                    *(("--batch-records", str(batch_records)) if batch_records else ()),
                ],
            )
            workers.append(worker)
        for worker in workers:
            line = await children.read_line(worker, WORKER_READY_TIMEOUT_S)
            if line != "ready":
                raise RuntimeError(f"{worker.name} said {line!r} instead of 'ready'")
        progress(f"{name}: {procs} processes x {inflight} in flight for {seconds:.0f} s")
        async with ticking(name, seconds):
            count_before = await server_counter() if server_counter else 0
            meter = CpuMeter(children)
            for worker in workers:
                await children.send_line(worker, "go")
            results = [json.loads(await children.read_line(w, seconds + 30)) for w in workers]
            cores = meter.cores()
            window = time.perf_counter() - meter.started
            server_rate = (await server_counter() - count_before) / window if server_counter else None
    finally:
        for worker in workers:
            await children.stop(worker.name)
    return LoadResult(
        completed=sum(int(r["completed"]) for r in results),
        errors=sum(int(r["errors"]) for r in results),
        seconds=max(float(r["elapsed_s"]) for r in results),
        first_error=next((str(r["first_error"]) for r in results if r["first_error"]), ""),
        cpu_cores=cores,
        server_rate=server_rate,
    )


async def preload(call: Call, count: int) -> None:
    semaphore = asyncio.Semaphore(PRELOAD_INFLIGHT)

    async def one(i: int) -> None:
        async with semaphore:
            await call(i)

    await asyncio.gather(*(one(i) for i in range(count)))


async def paced(children: Children, what: str, call: Call, rate: float, seconds: float) -> LoadResult:
    """Open-loop writes at `rate` per second for `seconds`: each write is sent when it is due,
    whether or not earlier ones have completed (at most PACED_INFLIGHT_MAX outstanding)."""
    loop = asyncio.get_running_loop()
    total = max(1, round(rate * seconds))
    semaphore = asyncio.Semaphore(PACED_INFLIGHT_MAX)
    completed = errors = 0
    first_error = ""
    last_done = 0.0

    async def one(i: int) -> None:
        nonlocal completed, errors, first_error, last_done
        try:
            await call(i)
        except grpc.aio.AioRpcError as exc:
            errors += 1
            first_error = first_error or f"{exc.code().name}: {exc.details()}"
        else:
            completed += 1
        finally:
            last_done = loop.time()
            semaphore.release()

    tasks: set[asyncio.Task[None]] = set()
    progress(f"{what}: {total} writes paced at {rate:.0f}/s")
    async with ticking(what, seconds):
        meter = CpuMeter(children)
        started = loop.time()
        for i in range(total):
            wait = started + i / rate - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await semaphore.acquire()
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        cores = meter.cores()
    # The rate the node absorbed: writes acknowledged over the span from the first send to the
    # last acknowledgement.
    return LoadResult(completed, errors, last_done - started, first_error, cores)


# -- engine only -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineResult:
    records: int
    seconds: float
    # This process's CPU time over the same span (every thread: the audit log's writer too).
    cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_us_per_record(self) -> float:
        return self.cpu_seconds / self.records * 1e6


def engine_commit_rate(directory: Path, batches: int, batch_records: int, value_bytes: int) -> EngineResult:
    """commit_local in this process, no RPC, no group-commit queue: `batches` durable
    transactions of `batch_records` new keys each (synchronous=FULL)."""
    engine = _bench_engine(directory)
    clock = HybridClock()
    value = b"v" * value_bytes
    try:
        engine.commit_local([LocalWrite("bench_solo", "warmup", value)], clock.now)
        elapsed = cpu = 0.0
        for b in range(batches):
            writes = [LocalWrite("bench_solo", f"e-{b}-{i}", value) for i in range(batch_records)]
            started, cpu_started = time.perf_counter(), time.process_time()
            results = engine.commit_local(writes, clock.now)
            elapsed += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
            _committed(results)
        return EngineResult(batches * batch_records, elapsed, cpu)
    finally:
        engine.close()


def _bench_engine(directory: Path) -> SQLiteEngine:
    directory.mkdir(parents=True, exist_ok=True)
    return SQLiteEngine(directory / "store.sqlite3", "bench-engine", "bench", synchronous="FULL")


def _committed(results: list[Committed | DomicileError]) -> list[Committed]:
    failed = [r for r in results if not isinstance(r, Committed)]
    if failed:
        raise RuntimeError(f"engine refused {len(failed)} benchmark writes: {failed[0]}")
    return [r for r in results if isinstance(r, Committed)]


async def engine_audit_commit_rate(
    directory: Path, batches: int, batch_records: int, value_bytes: int
) -> EngineResult:
    """engine_commit_rate with the audit trail every local write has: each write carries its
    audit entry, built as the enforcer builds an allowed write's (AuditLog.entry), in the
    store's commit, and the audit log then appends the committed entries to its own file, as a
    node's group committer hands them over (AuditLog.carry). The span ends when the log holds
    every entry durably. Still no RPC, no input checks, no policy decision and no answer: what
    a PutBatch record costs at least, since no write may be durable without its entry."""
    engine = await asyncio.to_thread(_bench_engine, directory)
    clock = HybridClock()
    audit = AuditLog(
        directory / "audit.sqlite3",
        region="bench",
        node_id="bench-engine",
        signing_key=Ed25519PrivateKey.generate(),
        subject_key=os.urandom(32),
        hlc=clock.now,
    )
    value = b"v" * value_bytes

    def commit(batch: int) -> None:
        keys = [f"e-{batch}-{i}" for i in range(batch_records)]
        writes = [
            LocalWrite(
                "bench_solo",
                key,
                value,
                audit=audit.entry(
                    principal="bench",
                    action=Audit.PUT,
                    namespace="bench_solo",
                    key=key,
                    decision="allow",
                    rule="namespace-scope",
                    policy_version="bench",
                ),
            )
            for key in keys
        ]
        audit.wait_carry_room()
        committed = _committed(engine.commit_local(writes, clock.now))
        audit.carry(
            [(c.mutation.lsn, w.audit) for c, w in zip(committed, writes, strict=True) if w.audit], []
        )

    try:
        audit.start(engine.audit_outbox, engine.last_lsn())
        engine.audit_settled = lambda: audit.carried_through
        await asyncio.to_thread(commit, -1)  # warm-up
        await audit.flush()
        started, cpu_started = time.perf_counter(), time.process_time()
        for b in range(batches):
            await asyncio.to_thread(commit, b)
        await audit.flush()
        return EngineResult(
            batches * batch_records, time.perf_counter() - started, time.process_time() - cpu_started
        )
    finally:
        await audit.close()
        engine.close()
