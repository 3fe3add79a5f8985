"""The digest trees' refresh after a batch load, and what it does to the event loop of the
node running it (`python -m bench.tree_refresh [--keys 50000] [--runs 2]`).

An anti-entropy round first brings the node's digest trees up to date: every key written since
the last round is read back from the store and its digest recomputed (node.replication
.digest_tree), some tens of microseconds of interpreter per key. After a batch load that is tens
of thousands of keys. This process commits `--keys` records (256-byte values) to a SQLite store
(synchronous OFF: the figure is the refresh, not the load), hands them to the in-memory log
tail as the group committer does, and refreshes the trees in two ways, alternating, `--runs`
times each, on fresh trees: in one go on a worker thread (DigestTrees.refresh, as rounds did
before) and as a round does now (node.replication.entropy.refresh_paced: bounded steps with
pauses). Meanwhile a timer every 10 ms on the event loop measures how late it runs: a node's
calls wait as long. Reported per way: the loop's lateness p99 and max, the refresh's wall time,
and the process's CPU time per key.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import REPO_ROOT
from bench.report import Figure, table, write_json
from bench.stats import percentile
from domicile.errors import DomicileError
from node.engine.base import LocalWrite
from node.engine.log_tail import LogTail
from node.engine.sqlite import SQLiteEngine
from node.offload import Offload
from node.replication.digest_tree import DigestTrees
from node.replication.entropy import refresh_paced

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "tree_refresh.json"
NAMESPACE = "bench_refresh"
COMMIT_RECORDS = 1000
VALUE = b"v" * 256
TICK_S = 0.01
WAYS = ("one go", "paced")


@dataclass
class Refresh:
    way: str
    wall_s: float
    cpu_s: float
    late_ms: list[float]


async def _loaded_trees(root: Path, keys: int) -> tuple[SQLiteEngine, DigestTrees]:
    engine = SQLiteEngine(str(root / "store.sqlite3"), "n1", "eu-west-1", synchronous="OFF")
    tail = LogTail(records_max=keys + COMMIT_RECORDS, bytes_max=1 << 30, after_lsn=engine.last_lsn())
    trees = DigestTrees(root / "digests.sqlite3", log_tail=tail)
    trees.refresh(engine)  # built from the empty store
    clock = itertools.count(1)
    for start in range(0, keys, COMMIT_RECORDS):
        writes = [
            LocalWrite(NAMESPACE, f"k{i}", VALUE) for i in range(start, min(keys, start + COMMIT_RECORDS))
        ]
        committed = engine.commit_local(writes, lambda: next(clock))
        refused = [c for c in committed if isinstance(c, DomicileError)]
        if refused:
            raise RuntimeError(f"the store refused {len(refused)} of the load's writes: {refused[0]}")
        tail.append([c.mutation for c in committed if not isinstance(c, DomicileError)])
    trees.follow(engine, engine.last_lsn())  # what the node's follower does every second
    return engine, trees


async def refresh_once(way: str, keys: int) -> Refresh:
    with tempfile.TemporaryDirectory(prefix="domicile-bench-refresh-") as tmp:
        engine, trees = await _loaded_trees(Path(tmp), keys)
        offload = Offload(threads=1)
        loop = asyncio.get_running_loop()
        late_ms: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            while not done.is_set():
                started = loop.time()
                await asyncio.sleep(TICK_S)
                late_ms.append(max(0.0, loop.time() - started - TICK_S) * 1000)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(10 * TICK_S)
        wall, cpu = time.perf_counter(), time.process_time()
        if way == "one go":
            await offload.run(trees.refresh, engine)
        else:
            await refresh_paced(trees, engine, offload)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        done.set()
        await ticker
        if trees.dirty_count or trees.tree(NAMESPACE).key_count != keys:
            raise RuntimeError(f"{way}: the refresh left {trees.dirty_count} keys marked")
        trees.close()
        engine.close()
        return Refresh(way, wall, cpu, late_ms)


def figures(results: list[Refresh], keys: int) -> list[Figure]:
    by: dict[str, list[Refresh]] = {w: [r for r in results if r.way == w] for w in WAYS}
    out: list[Figure] = []
    p99: dict[str, float] = {}
    for way, runs in by.items():
        key = way.replace(" ", "_")
        late = [ms for r in runs for ms in r.late_ms]
        p99[way] = percentile(late, 0.99)
        out.append(
            Figure(
                f"{key}_loop_late_p99_ms", f"{way}: event-loop lateness p99 (10 ms timer)", p99[way], "ms",
                baseline=p99["one go"] if way != "one go" else None,
                baseline_label="one go" if way != "one go" else "",
            )
        )  # fmt: skip
        out.append(Figure(f"{key}_loop_late_max_ms", f"{way}: event-loop lateness max", max(late), "ms"))
        out.append(
            Figure(f"{key}_wall_s", f"{way}: refresh wall time", sum(r.wall_s for r in runs) / len(runs), "s")
        )
        cpu_us = sum(r.cpu_s for r in runs) * 1e6 / (len(runs) * keys)
        out.append(Figure(f"{key}_cpu_us_per_key", f"{way}: process CPU per key", cpu_us, "us"))
    return out


async def run(keys: int, runs: int, out: Path) -> int:
    results: list[Refresh] = []
    for i in range(runs):
        for way in WAYS:
            print(f"[refresh] {way}, run {i + 1} of {runs}: {keys} marked keys", file=sys.stderr)
            results.append(await refresh_once(way, keys))
    found = figures(results, keys)
    write_json(out, found, {"keys": keys, "runs": runs, "loadavg_1m": os.getloadavg()[0]})
    print(table(found))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tree_refresh", description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=50_000, help="keys marked before the refresh (50000)")
    p.add_argument("--runs", type=int, default=2, help="refreshes of each way, alternating (2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    a = p.parse_args(argv)
    if not 1 <= a.keys <= 2_000_000 or not 1 <= a.runs <= 20:
        p.error("--keys must be 1 to 2000000 and --runs 1 to 20")
    return asyncio.run(run(a.keys, a.runs, a.out))


if __name__ == "__main__":
    sys.exit(main())
