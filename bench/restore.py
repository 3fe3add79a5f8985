"""`make bench-restore` (python bench/restore.py --records N): backups and restore against a
real S3 server (SeaweedFS on free ports), each figure beside a baseline of the same run.

1. Fills a SQLite engine with N records of 1 KiB values (values written as a node stores
   them; the figure is about moving bytes, so they are not sealed here).
2. Baseline: raw boto3 puts of the same bytes, in objects of the backup's part size.
3. Backup throughput: one base snapshot of the store (BackupShipper.start_generation).
4. Recovery point: a writer at --rate writes/s while the shipper runs a round every
   --interval seconds (the node's default, 0.5);
   per write, the time from its commit to the end of the round that stored it in the bucket.
5. Restore: `domicile restore`'s code path rebuilds the store from the bucket; the wall time,
   and the CPU seconds of the restore (every thread of this process) and of the S3 server, so
   that a figure taken on a shared, loaded machine can be read for what the restore costs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domicile.backup.bucket import Bucket
from domicile.cluster import BackupSpec
from domicile.hlc import HybridClock
from domicile.s3_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, SeaweedServer
from node.backup.restore import restore
from node.backup.shipper import PART_BYTES, BackupShipper
from node.config import SQLiteSettings
from node.engine.base import LocalWrite, StorageEngine
from node.engine.factory import open_engine
from node.metrics import NodeMetrics

NODE, REGION = "eu-west-1", "eu-west-1"
VALUE_BYTES = 1024
FILL_BATCH = 2_000


def _fill(engine: StorageEngine, records: int, clock: HybridClock) -> float:
    started = time.monotonic()
    value = os.urandom(VALUE_BYTES)
    for start in range(0, records, FILL_BATCH):
        writes = [
            LocalWrite("bench", f"k{i:09d}", value) for i in range(start, min(records, start + FILL_BATCH))
        ]
        engine.commit_local(writes, clock.now)
    return time.monotonic() - started


def _mb_per_s(size: int, seconds: float) -> float:
    return size / 1e6 / seconds if seconds > 0 else 0.0


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _cpu_seconds(server: SeaweedServer) -> float:
    """User and system CPU seconds the S3 server's process has used (Linux /proc)."""
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _baseline(spec: BackupSpec, total: int) -> float:
    """Plain boto3 puts of the same bytes in objects of the same size, nothing else."""
    s3 = boto3.client("s3", endpoint_url=spec.endpoint, region_name=spec.bucket_region)
    body = os.urandom(PART_BYTES)
    started = time.monotonic()
    sent = 0
    i = 0
    while sent < total:
        part = body[: min(PART_BYTES, total - sent)]
        s3.put_object(Bucket=spec.bucket, Key=f"baseline/{i:06d}", Body=part)
        sent += len(part)
        i += 1
    return _mb_per_s(sent, time.monotonic() - started)


def _rpo(
    engine: StorageEngine,
    shipper: BackupShipper,
    clock: HybridClock,
    rate: int,
    seconds: float,
    interval_s: float,
) -> list[float]:
    committed: dict[int, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    samples: list[float] = []

    def write() -> None:
        n = 0
        tick = 0.01
        per_tick = max(1, rate // 100)
        next_at = time.monotonic()
        while not stop.is_set():
            writes = [LocalWrite("rpo", f"w{n + j}", b"x" * 100) for j in range(per_tick)]
            results = engine.commit_local(writes, clock.now)
            now = time.monotonic()
            with lock:
                for r in results:
                    committed[r.mutation.lsn] = now  # type: ignore[union-attr]
            n += per_tick
            next_at += tick
            time.sleep(max(0.0, next_at - time.monotonic()))

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        round_started = time.monotonic()
        shipper.ship_pending()
        done = time.monotonic()
        with lock:
            for lsn in [lsn for lsn in committed if lsn <= shipper.state.shipped_lsn]:
                samples.append(done - committed.pop(lsn))
        time.sleep(max(0.0, interval_s - (time.monotonic() - round_started)))
    stop.set()
    writer.join()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000, help="records of 1 KiB (default 100000)")
    parser.add_argument(
        "--rate", type=int, default=1000, help="writes/s while the RPO is measured (default 1000)"
    )
    parser.add_argument(
        "--rpo-seconds", type=float, default=15.0, help="how long the RPO is measured (default 15)"
    )
    parser.add_argument(
        "--interval", type=float, default=0.5, help="seconds between backup rounds (default 0.5, as a node)"
    )
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", LOCAL_ACCESS_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", LOCAL_SECRET_KEY)
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        root = Path(tmp)
        server = SeaweedServer(root / "s3").start()
        try:
            spec = BackupSpec(endpoint=server.endpoint, bucket="bench-backups", bucket_region=REGION)
            bucket = Bucket(spec)
            bucket.ensure()
            bucket.put("warm-up", b"x")  # the first put allocates a volume
            clock = HybridClock()
            engine = open_engine(SQLiteSettings(synchronous="OFF"), str(root / "node"), NODE, REGION)
            fill_s = _fill(engine, args.records, clock)
            print(f"store: {args.records} records of {VALUE_BYTES} B written in {fill_s:.1f} s")
            shipper = BackupShipper(engine, bucket, spec, NODE, REGION, NodeMetrics(NODE, REGION))
            started = time.monotonic()
            manifest = shipper.start_generation()
            backup_s = time.monotonic() - started
            size = sum(p.bytes for p in manifest.parts)
            baseline = _baseline(spec, size)
            backup = _mb_per_s(size, backup_s)
            print(
                f"backup: base snapshot of {size / 1e6:.1f} MB in {len(manifest.parts)} parts, "
                f"{backup_s:.1f} s, {backup:.1f} MB/s; raw boto3 put baseline {baseline:.1f} MB/s "
                f"(ratio {backup / baseline:.2f})"
            )
            samples = _rpo(engine, shipper, clock, args.rate, args.rpo_seconds, args.interval)
            print(
                f"recovery point at {args.rate} writes/s over {args.rpo_seconds:.0f} s "
                f"({len(samples)} writes): "
                f"p50 {_quantile(samples, 0.5) * 1000:.0f} ms, p99 {_quantile(samples, 0.99) * 1000:.0f} ms, "
                f"max {max(samples, default=0) * 1000:.0f} ms"
            )
            engine.close()
            started, cpu, server_cpu = time.monotonic(), time.process_time(), _cpu_seconds(server)
            summary = restore(spec, NODE, REGION, root / "restored")
            restore_s = time.monotonic() - started
            cpu = time.process_time() - cpu
            server_cpu = _cpu_seconds(server) - server_cpu
            print(
                f"restore: {summary.states} states and {summary.log_entries} log entries from "
                f"{summary.objects} objects ({summary.bytes / 1e6:.1f} MB) in {restore_s:.1f} s, "
                f"{summary.states / restore_s:.0f} records/s; CPU {cpu:.1f} s in the restore "
                f"(every thread), {server_cpu:.1f} s in the S3 server"
            )
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
