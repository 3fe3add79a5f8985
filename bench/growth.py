"""`make bench-growth` (python bench/growth.py --records N): the change log stays bounded under
truncation.

A SQLite engine (synchronous=NORMAL by default: the figure is rows, not fsyncs) takes N writes
in commits of 1,000. One link's target acknowledges with a lag of --lag entries and a backup
ships everything. Every --pass-every writes (a truncation pass, as the node's timer would run
one) the log is truncated up to truncation_point() in the node's steps (TRUNCATE_STEP, at most
PASS_ENTRIES_MAX per pass), and the rows the log holds are sampled just before each pass.
Baseline of the same run: the rows without truncation (N), and the time the writes alone took
beside the time truncation took.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domicile.hlc import HybridClock
from node.engine.base import LocalWrite
from node.engine.sqlite import SQLiteEngine
from node.replication.truncation import PASS_ENTRIES_MAX, TRUNCATE_STEP, truncation_point

BATCH = 1_000
KEYS = 100_000  # writes cycle over this many keys (the log grows with writes, the store does not)


def run(records: int, lag: int, pass_every: int, value_bytes: int, synchronous: str) -> dict[str, float]:
    clock = HybridClock()
    value = os.urandom(value_bytes)
    with tempfile.TemporaryDirectory() as root:
        engine = SQLiteEngine(Path(root) / "store.sqlite3", "bench", "eu-west-1", synchronous=synchronous)
        write_s = truncate_s = 0.0
        rows_max = 0
        passes = 0
        since_pass = 0
        for start in range(0, records, BATCH):
            writes = [
                LocalWrite("bench", f"k{i % KEYS:06d}", value)
                for i in range(start, min(records, start + BATCH))
            ]
            began = time.perf_counter()
            engine.commit_local(writes, clock.now)
            write_s += time.perf_counter() - began
            since_pass += len(writes)
            if since_pass < pass_every:
                continue
            since_pass = 0
            began = time.perf_counter()
            last = engine.last_lsn()
            point = truncation_point(last, {"target": max(0, last - lag)}, last)
            budget = PASS_ENTRIES_MAX
            log_start = engine.log_start()
            rows_max = max(rows_max, last - log_start.lsn)  # the most the log held: just before a pass
            while log_start.lsn < point and budget > 0:
                before = log_start.lsn
                log_start = engine.truncate_log(point, min(TRUNCATE_STEP, budget))
                budget -= log_start.lsn - before
            truncate_s += time.perf_counter() - began
            passes += 1
        last = engine.last_lsn()
        rows_end = last - engine.log_start().lsn
        counted = engine._reader().execute("SELECT COUNT(*) FROM changelog").fetchone()[0]
        engine.close()
    if counted != rows_end:
        raise SystemExit(f"the log holds {counted} rows, but its positions say {rows_end}")
    return {
        "records": records,
        "rows_without_truncation": records,
        "rows_end": rows_end,
        "rows_max_before_a_pass": rows_max,
        "bound": lag + pass_every,
        "passes": passes,
        "write_s": write_s,
        "truncate_s": truncate_s,
        "truncate_share": truncate_s / write_s if write_s else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--lag", type=int, default=10_000, help="entries the link's target is behind")
    parser.add_argument("--pass-every", type=int, default=50_000, help="writes between truncation passes")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument(
        "--synchronous",
        default="NORMAL",
        help="SQLite synchronous mode (FULL as deployed: slower, same rows)",
    )
    parser.add_argument("--out", default="bench/results/growth.json")
    args = parser.parse_args()
    result = run(args.records, args.lag, args.pass_every, args.value_bytes, args.synchronous)
    print(f"writes: {result['records']:,} ({args.value_bytes} B values) in {result['write_s']:.1f} s")
    print(f"change-log rows without truncation: {result['rows_without_truncation']:,}")
    print(
        f"change-log rows with truncation: {result['rows_end']:,} at the end, at most "
        f"{result['rows_max_before_a_pass']:,} just before a pass "
        f"(bound: lag + writes per pass = {result['bound']:,})"
    )
    print(
        f"truncation: {result['passes']} passes, {result['truncate_s']:.1f} s "
        f"({result['truncate_share']:.0%} of the write time)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
