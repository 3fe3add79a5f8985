"""`make bench-scale` (python -m bench.scale --records N): one node at N records of 1 KiB.

A coordinator and one node (mutual TLS, synchronous=FULL) on free ports, data in a temp dir:
1. Get p99 over 1,000 keys of a node that holds only those (the baseline of 5).
2. Load: N records of 1 KiB through PutBatch (1,000 per call, a few calls in flight); time,
   records/s and the node's CPU per record.
3. Store size on disk (store and its WAL, the audit log) against the raw size of keys plus
   values; per table when SQLite's dbstat is available.
4. Node RSS after the load.
5. Get p99 over random keys of the N, as a ratio to 1. (target <= 1.2).
6. Scan throughput: every record, page after page.
7. Compliance scan time of the whole store.
8. Restart, twice: time from start to serving, and to the end of the audit-chain check at start
   (domicile_audit_chain_valid set); the first reads the whole log, the second resumes after
   the checkpoint the first stored.
Figures print as they come, and the run ends with every figure as JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import phases
from bench.client import RPC_DEADLINE_S, get_call, put_call, put_request, sequential_ms
from bench.cluster import SOLO_NAMESPACE, SOLO_REGION, BenchCluster, NodeHandle
from bench.procs import Children, cpu_seconds
from bench.stats import percentile
from domicile.identity.principal import Role
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from domicile.wire.limits import PUT_BATCH_RECORDS_MAX

VALUE_BYTES = 1024
HOT_KEYS = 1000
GET_SAMPLES = 2000
LOAD_CALLS_IN_FLIGHT = 4
SCAN_PAGE = 1000
CHAIN_CHECK_TIMEOUT_S = 3600.0
CHAIN_VALID = re.compile(r"^domicile_audit_chain_valid (\S+)$", re.MULTILINE)


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(found.group(1)) / 1024 if found else None


def files_mb(data_dir: Path) -> dict[str, float]:
    sizes: dict[str, float] = {}
    for path in sorted(data_dir.glob("*.sqlite3*")):
        sizes[path.name] = path.stat().st_size / 1e6
    return sizes


def tables_mb(db: Path) -> dict[str, float]:
    """Bytes per table and index, from SQLite's dbstat (empty when it is not compiled in)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT name, SUM(pgsize), SUM(unused) FROM dbstat GROUP BY name").fetchall()
    except sqlite3.Error:
        return {}
    return {f"{name} (unused {unused / 1e6:.1f})": size / 1e6 for name, size, unused in rows}


async def load(node: NodeHandle, records: int, batch: int) -> tuple[float, int]:
    """Writes records k000000000.. through PutBatch; returns seconds and raw key+value bytes."""
    value = os.urandom(VALUE_BYTES)
    starts = iter(range(0, records, batch))
    raw = 0
    done = 0
    last_shown = time.monotonic()

    async def lane() -> None:
        nonlocal raw, done, last_shown
        for start in starts:
            keys = [f"k{i:09d}" for i in range(start, min(records, start + batch))]
            request = spb.PutBatchRequest(puts=[put_request(SOLO_NAMESPACE, k, value) for k in keys])
            response = await node.stub.PutBatch(request, timeout=RPC_DEADLINE_S * 12)
            refused = [r for r in response.results if r.code != 0]
            if refused:
                raise RuntimeError(f"{len(refused)} records refused: {refused[0].message}")
            raw += sum(len(k) + VALUE_BYTES for k in keys)
            done += len(keys)
            if time.monotonic() - last_shown > 5:
                last_shown = time.monotonic()
                phases.progress(f"load: {done} of {records} records")

    started = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(LOAD_CALLS_IN_FLIGHT)))
    return time.monotonic() - started, raw


async def chain_checked(node: NodeHandle, since: float) -> float:
    """Seconds from `since` until the node reports its audit chain checked (valid)."""
    deadline = time.monotonic() + CHAIN_CHECK_TIMEOUT_S
    while time.monotonic() < deadline:
        found = CHAIN_VALID.search(await node.scrape())
        if found and float(found.group(1)) == 1.0:
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    raise RuntimeError("the audit chain check did not finish")


async def run(records: int, batch: int, seed: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="domicile-scale-"))
    (root / "logs").mkdir()
    children = Children(root / "logs", cwd=root)
    cluster = BenchCluster(root, children)
    figures: dict[str, Any] = {"records": records, "value_bytes": VALUE_BYTES, "seed": seed}
    rng = random.Random(seed)
    try:
        await cluster.start_coordinator()
        node = await cluster.start_node(SOLO_REGION, synchronous="FULL")
        pid = children.children[f"node-{node.node_id}"].process.pid

        hot = [f"hot-{i}" for i in range(HOT_KEYS)]
        await phases.preload(put_call(node.channel, SOLO_NAMESPACE, "hot", b"v" * VALUE_BYTES), HOT_KEYS)
        small = await sequential_ms(
            get_call(node.channel, SOLO_NAMESPACE, hot, lambda: rng.randrange(HOT_KEYS)), GET_SAMPLES
        )
        figures["get_p99_ms_at_1k"] = percentile(small, 0.99)
        phases.progress(f"Get p99 at {HOT_KEYS} keys: {figures['get_p99_ms_at_1k']:.3f} ms")

        cpu_before = cpu_seconds(pid) or 0.0
        seconds, raw = await load(node, records, batch)
        cpu = (cpu_seconds(pid) or 0.0) - cpu_before
        figures.update(
            load_s=seconds,
            load_records_per_s=records / seconds,
            load_node_cpu_us_per_record=cpu / records * 1e6,
            raw_mb=raw / 1e6,
        )
        phases.progress(f"load: {records} records in {seconds:.1f} s ({records / seconds:,.0f}/s)")

        files = files_mb(node.data_dir)
        store = sum(size for name, size in files.items() if name.startswith("store.sqlite3"))
        figures.update(files_mb=files, store_mb=store, store_over_raw=store / (raw / 1e6))
        figures["rss_mb"] = rss_mb(pid)

        keys = [f"k{i:09d}" for i in range(records)]
        large = await sequential_ms(
            get_call(node.channel, SOLO_NAMESPACE, keys, lambda: rng.randrange(records)), GET_SAMPLES
        )
        figures["get_p99_ms_at_n"] = percentile(large, 0.99)
        figures["get_p99_ratio"] = figures["get_p99_ms_at_n"] / figures["get_p99_ms_at_1k"]

        started = time.monotonic()
        token, scanned = "", 0
        while True:
            page = await node.stub.Scan(
                spb.ScanRequest(namespace=SOLO_NAMESPACE, page_size=SCAN_PAGE, page_token=token),
                timeout=RPC_DEADLINE_S * 6,
            )
            scanned += len(page.items)
            token = page.next_page_token
            if not token:
                break
        figures.update(scan_records=scanned, scan_records_per_s=scanned / (time.monotonic() - started))

        auditor = cluster.node_channel(node, "bench-auditor", (Role.AUDITOR,))
        try:
            started = time.monotonic()
            await spb_grpc.StorageNodeServiceStub(auditor).ScanCompliance(
                spb.ScanComplianceRequest(), timeout=3600
            )
            figures["compliance_scan_s"] = time.monotonic() - started
        finally:
            await auditor.close()

        await cluster.stop_node(node.node_id)
        figures["tables_mb"] = tables_mb(node.data_dir / "store.sqlite3")
        # The first restart checks the whole audit log (no checkpoint yet: the node's first start
        # found it empty); the second resumes from the checkpoint the first one stored.
        for which in ("first", "second"):
            started = time.monotonic()
            again = await cluster.start_node(SOLO_REGION, synchronous="FULL")
            figures[f"startup_s_{which}_restart"] = time.monotonic() - started
            figures[f"startup_with_chain_check_s_{which}_restart"] = await chain_checked(again, started)
            await cluster.stop_node(again.node_id)
        return figures
    finally:
        await cluster.close()
        await children.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="records of 1 KiB (1,000,000)")
    parser.add_argument(
        "--batch",
        type=int,
        default=PUT_BATCH_RECORDS_MAX,
        help=f"records per PutBatch ({PUT_BATCH_RECORDS_MAX})",
    )
    parser.add_argument("--seed", type=int, help="seed of the Get key order (random by default)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    a = parser.parse_args(argv)
    if a.records < 1 or not 1 <= a.batch <= PUT_BATCH_RECORDS_MAX:
        parser.error(f"--records must be at least 1 and --batch 1 to {PUT_BATCH_RECORDS_MAX}")
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 32)
    figures = asyncio.run(run(a.records, a.batch, seed))
    text = json.dumps(figures, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
