"""Where a node's CPU goes under a write load: py-spy samples the node process while the bench's
load generators write to it, and the run prints the functions with the largest share of the
samples (own time, and time including callees).

`make profile` (or `python -m bench.profile [--method put] [--seconds 10]`). The node runs with
synchronous=FULL and mutual TLS, as in `make bench`; the load is the bench's concurrent Put load
(`--method put`: single-record Puts, 2 processes x 128 in flight; `--method put_batch`: PutBatch
calls of --batch-records records, 2 processes x 8 in flight). The raw samples (collapsed
stacks, one line per distinct stack with its count) are kept beside the printed table.

It also prints the node's CPU per record (its process CPU time over the load, over the records
written) and, with --engine-baseline, the engine alone in this process (commit_local of
batches of 1,000 new keys, synchronous=FULL) after the node has stopped: the ratio the bench
gives PutBatch, from one phase. --no-spy leaves py-spy out, for figures without its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
import tempfile
from pathlib import Path

from bench import phases
from bench.cluster import SOLO_NAMESPACE, SOLO_REGION, BenchCluster
from bench.main import ENGINE_BATCH_RECORDS
from bench.procs import REPO_ROOT, Children

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "profile"
TOP_DEFAULT = 25
SAMPLE_RATE_HZ = 200


def top_functions(collapsed: str, top: int) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's collapsed stacks ("frame;frame;... count" per line): the total sample count,
    the `top` frames by own share (the leaf of a stack) and by inclusive share (anywhere in it)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return 0, [], []

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(frame, count / total) for frame, count in counter.most_common(top)]

    return total, shares(own), shares(inclusive)


def cpu_us_per_record(cores: float, seconds: float, records: int) -> float:
    """CPU microseconds per record: the cores a process used over the load's window, times the
    window, over the records written in it."""
    return cores * seconds / records * 1e6 if records else 0.0


def print_top(title: str, rows: list[tuple[str, float]]) -> None:
    print(f"\n{title}")
    for frame, share in rows:
        print(f"  {share * 100:5.1f}%  {frame}")


async def profile(
    method: str,
    seconds: float,
    out_dir: Path,
    top: int,
    value_bytes: int,
    native: bool,
    batch_records: int,
    spy_on: bool = True,
    engine_batches: int = 0,
) -> int:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    root = Path(tempfile.mkdtemp(prefix="domicile-profile-"))
    (root / "logs").mkdir()
    children = Children(root / "logs", cwd=root)
    cluster = BenchCluster(root, children)
    raw = out_dir / f"{method}.collapsed.txt"
    try:
        await cluster.start_coordinator()
        node = await cluster.start_node(SOLO_REGION, synchronous="FULL")
        pid = children.children[f"node-{node.node_id}"].process.pid
        spy = None
        if spy_on:
            phases.progress(f"py-spy record of node pid {pid} for {seconds:.0f} s under the {method} load")
            spy = await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(raw),
                "--duration", str(int(seconds)), "--rate", str(SAMPLE_RATE_HZ),
                *(() if native else ("--nonblocking",)),
                "--threads", "--gil", *(("--native",) if native else ()),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        load = await phases.concurrent_load(
            children,
            name=f"{method}-load",
            address=node.address,
            method=method,
            namespace=SOLO_NAMESPACE,
            value_bytes=value_bytes,
            procs=2,
            inflight=128 if method == "put" else 8,
            seconds=seconds,
            tls_dir=cluster.tls_dir,
            batch_records=batch_records if method == "put_batch" else 0,
        )
        if spy is not None:
            _, err = await spy.communicate()
            if spy.returncode != 0 or not await asyncio.to_thread(raw.exists):
                print(
                    f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-2000:]}",
                    file=sys.stderr,
                )
                return 1
    finally:
        await cluster.close()
        await children.stop_all()
    node_cores = load.cpu_cores.get(f"node-{SOLO_REGION}", 0.0)
    node_name = f"node-{SOLO_REGION}"
    others = ", ".join(f"{n} {c:.2f}" for n, c in sorted(load.cpu_cores.items()) if n != node_name)
    unit = "records" if method == "put_batch" else "calls"
    print(
        f"{method}: {load.completed} {unit} in {load.seconds:.1f} s ({load.rate:.0f}/s), "
        f"{load.errors} errors; node {node_cores:.2f} cores, "
        f"{cpu_us_per_record(node_cores, load.seconds, load.completed):.0f} us of CPU per record; "
        f"load generators {others} cores"
    )
    if engine_batches:
        phases.progress(
            f"engine only: {engine_batches} x commit_local({ENGINE_BATCH_RECORDS}), synchronous=FULL"
        )
        engine = await asyncio.to_thread(
            phases.engine_commit_rate, root / "engine-only", engine_batches, ENGINE_BATCH_RECORDS, value_bytes
        )
        print(
            f"engine only: {engine.rate:.0f} records/s; {method} reached {load.rate / engine.rate:.2f}x of it"
        )
    if spy is not None:
        total, own, inclusive = top_functions(await asyncio.to_thread(raw.read_text), top)
        print(f"{total} samples with the GIL held")
        print_top("own time (share of samples with the GIL)", own)
        print_top("inclusive time", inclusive)
        print(f"\ncollapsed stacks: {raw}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument(
        "--method",
        choices=("put", "put_batch"),
        default="put",
        help="the load: single Puts or PutBatch (put)",
    )
    parser.add_argument("--batch-records", type=int, default=100, help="records per PutBatch call (100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load and sampling time (10 s)")
    parser.add_argument("--value-bytes", type=int, default=256, help="value size (256)")
    parser.add_argument("--no-spy", action="store_true", help="no py-spy: the figures without its cost")
    parser.add_argument(
        "--engine-baseline",
        type=int,
        default=0,
        metavar="BATCHES",
        help="then time the engine alone over BATCHES commits of 1,000 records (0: not)",
    )
    parser.add_argument("--native", action="store_true", help="sample C frames too (gRPC core, SQLite)")
    parser.add_argument("--top", type=int, default=TOP_DEFAULT, help=f"rows per table ({TOP_DEFAULT})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the raw samples")
    a = parser.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(
        profile(
            a.method,
            a.seconds,
            a.out,
            a.top,
            a.value_bytes,
            a.native,
            a.batch_records,
            spy_on=not a.no_spy,
            engine_batches=a.engine_baseline,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
