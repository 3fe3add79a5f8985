"""`make bench-commit` (python -m bench.commit_tail): the latency of single durable commits of the
SQLite engine, with its WAL checkpoints made beside the commits (domicile.sqlite_checkpoint) and
with SQLite's own checkpoints inside them, in the same run.

Two engines, each on a file of its own, take single Puts (one record of --value-bytes at a key
drawn from --keys, with its carried audit entry, as a node commits a Put), in turns of
IN_TURN_BLOCK commits in an order drawn anew each round, with --pause-ms between commits (a
writer between requests). In the baseline engine the checkpointer is stopped at the start, so
that only SQLite's own checkpoint (inside the commit that takes the WAL past 1,000 pages) runs:
the engine as it was before the checkpointer. Reported: each engine's commit p50, p99, p99.9
and slowest, its commits over 2 ms, its checkpoints, and the ratios of p99.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Figure, table, write_json
from bench.stats import percentile
from domicile.audit import AuditEntry
from domicile.hlc import HybridClock
from node.engine.base import LocalWrite
from node.engine.sqlite import SQLiteEngine

IN_TURN_BLOCK = 25
SLOW_MS = 2.0
KINDS = ("beside", "inside")
NAMES = {"beside": "checkpoints beside the commits", "inside": "SQLite's checkpoints inside them"}


def _write(i: int, key: str, value: bytes) -> LocalWrite:
    entry = AuditEntry(
        0, i, i, "eu-west-1", "bench", "bench", "put", "bench", key, "", "allow", "bench", "1", ""
    )
    return LocalWrite("bench", key, value, audit=entry)


def run(
    commits: int, pause_ms: float, keys: int, value_bytes: int, seed: int
) -> tuple[list[Figure], dict[str, float]]:
    rng = random.Random(seed)
    clock = HybridClock()
    value = os.urandom(value_bytes)
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as root:
        engines = {kind: SQLiteEngine(Path(root) / f"{kind}.sqlite3", "bench", "eu-west-1") for kind in KINDS}
        try:
            engines["inside"].sqlite.checkpointer.close()
            # Both stores hold the keys before the timed commits: updates, as a running node's are.
            for engine in engines.values():
                for start in range(0, keys, 1_000):
                    batch = [_write(0, f"k{i:06d}", value) for i in range(start, min(keys, start + 1_000))]
                    engine.commit_local(batch, clock.now)
            i = 0
            while i < commits:
                order = list(KINDS)
                rng.shuffle(order)
                for kind in order:
                    engine = engines[kind]
                    for j in range(IN_TURN_BLOCK):
                        write = _write(i + j + 1, f"k{rng.randrange(keys):06d}", value)
                        began = time.perf_counter()
                        engine.commit_local([write], clock.now)
                        samples[kind].append((time.perf_counter() - began) * 1000)
                        time.sleep(pause_ms / 1000)
                i += IN_TURN_BLOCK
            checkpoints = engines["beside"].sqlite.checkpointer.checkpoints
        finally:
            for engine in engines.values():
                engine.close()
    p99 = {kind: percentile(samples[kind], 0.99) for kind in KINDS}
    figures: list[Figure] = []
    for kind in KINDS:
        xs = samples[kind]
        figures += [
            Figure(f"commit_{kind}_p50_ms", f"commit p50, {NAMES[kind]}", statistics.median(xs), "ms"),
            Figure(f"commit_{kind}_p99_ms", f"commit p99, {NAMES[kind]}", p99[kind], "ms"),
            Figure(f"commit_{kind}_p999_ms", f"commit p99.9, {NAMES[kind]}", percentile(xs, 0.999), "ms"),
            Figure(f"commit_{kind}_max_ms", f"slowest commit, {NAMES[kind]}", max(xs), "ms"),
            Figure(
                f"commit_{kind}_slow",
                f"commits over {SLOW_MS:g} ms of {len(xs)}, {NAMES[kind]}",
                float(sum(x > SLOW_MS for x in xs)),
                "",
            ),
        ]
    figures.append(
        Figure(
            "commit_p99_beside_vs_inside",
            "commit p99, checkpoints beside against inside",
            p99["beside"],
            "ms",
            baseline=p99["inside"],
            baseline_label="commit p99, SQLite's checkpoints inside (same run)",
        )
    )
    return figures, {"checkpoints_beside": float(checkpoints)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_tail", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--commits", type=int, default=2_000, help=f"timed commits per engine (in blocks of {IN_TURN_BLOCK})"
    )
    parser.add_argument("--pause-ms", type=float, default=2.0, help="pause after each commit")
    parser.add_argument("--keys", type=int, default=20_000, help="keys the commits update")
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    for name, value, least in (
        ("--commits", args.commits, 1),
        ("--pause-ms", args.pause_ms, 0),
        ("--keys", args.keys, 1),
        ("--value-bytes", args.value_bytes, 1),
    ):
        if value < least:
            parser.error(f"{name} is {value}; it must be at least {least}")
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed {seed}; replay with --seed {seed}", flush=True)
    figures, extra = run(args.commits, args.pause_ms, args.keys, args.value_bytes, seed)
    print(table(figures))
    print(f"checkpoints made beside the commits: {extra['checkpoints_beside']:.0f}")
    if args.out is not None:
        write_json(args.out, figures, {"seed": seed, **vars(args), **extra, "out": str(args.out)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
