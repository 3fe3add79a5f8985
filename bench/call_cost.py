"""The cost of one call, alone: node CPU per single-record durable Put against the bare echo
server's CPU per call, and durable Put p99 against echo p99 + 2 x fdatasync p99, each pair
measured in the same run. These are two figures of `make bench`, without the rest of it, so
that a change to the call layer can be measured in a minute.

`make bench-call` (or `python -m bench.call_cost [--samples 2000] [--load-seconds 8] [--rounds 2]`).
The node runs with synchronous=FULL and mutual TLS, as in `make bench`, and so does the echo
server (a node's certificate of the run's CA, the client's demanded): the difference is the
node's work, not the transport's. The loads are the bench's
concurrent loads (2 processes x 128 in flight). Echo and Put loads alternate `--rounds` times, so
that the drift of a shared machine falls on both; each round prints its own pair. The sequential
calls of the latency figures also give each server's CPU per call one call at a time, where a
Put pays a whole group commit alone.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path

from bench import phases
from bench.client import channel, echo_call, put_call
from bench.cluster import BATCH_METRIC, SOLO_NAMESPACE, SOLO_REGION, BenchCluster
from bench.main import PUT_CPU_SLACK_US, cpu_us_per_call, p50_p99
from bench.procs import Children, cpu_seconds

LOAD_PROCS = 2
LOAD_INFLIGHT = 128


def pid_of(children: Children, name: str) -> int | None:
    child = children.children.get(name)
    return child.process.pid if child is not None else None


class CpuTally:
    """One process's CPU time over some phases, and the calls made in them."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.seconds: float | None = 0.0
        self.calls = 0

    async def over(self, phase: Awaitable[list[float]]) -> list[float]:
        before = cpu_seconds(self.pid) if self.pid is not None else None
        latencies = await phase
        after = cpu_seconds(self.pid) if self.pid is not None else None
        if before is None or after is None or self.seconds is None:
            self.seconds = None  # not measured (no /proc): no figure
        else:
            self.seconds += after - before
        self.calls += len(latencies)
        return latencies

    def us_per_call(self) -> float | None:
        return self.seconds / self.calls * 1e6 if self.seconds is not None and self.calls else None


async def load(
    children: Children,
    name: str,
    address: str,
    method: str,
    tls_dir: Path,
    seconds: float,
    value_bytes: int,
) -> phases.LoadResult:
    return await phases.concurrent_load(
        children,
        name=name,
        address=address,
        method=method,
        namespace=SOLO_NAMESPACE,
        value_bytes=value_bytes,
        procs=LOAD_PROCS,
        inflight=LOAD_INFLIGHT,
        seconds=seconds,
        tls_dir=tls_dir,
    )


async def measure(samples: int, load_seconds: float, rounds: int, value_bytes: int) -> int:
    root = Path(tempfile.mkdtemp(prefix="domicile-call-cost-"))
    (root / "logs").mkdir()
    children = Children(root / "logs", cwd=root)
    cluster = BenchCluster(root, children)
    value = b"v" * value_bytes
    try:
        await cluster.start_coordinator()
        echo_address, node = await asyncio.gather(
            cluster.start_echo("echo"), cluster.start_node(SOLO_REGION, synchronous="FULL")
        )
        echo_ms: list[float] = []
        put_ms: list[float] = []
        echo_seq = CpuTally(pid_of(children, "echo"))
        put_seq = CpuTally(pid_of(children, f"node-{SOLO_REGION}"))
        async with channel(echo_address, cluster.dialer) as ch:
            for half in range(2):
                echo_ms += await echo_seq.over(
                    phases.sequential(
                        "echo baseline (mutual TLS)",
                        echo_call(ch, SOLO_NAMESPACE, "echo", value),
                        samples // 2,
                    )
                )
                put_ms += await put_seq.over(
                    phases.sequential(
                        "durable Put (synchronous=FULL), mutual TLS",
                        put_call(node.channel, SOLO_NAMESPACE, f"put{half}", value),
                        samples // 2,
                    )
                )
        fsync_ms = await asyncio.to_thread(phases.fdatasync_ms, node.data_dir, samples, value_bytes)
        cpu: list[tuple[float | None, float | None]] = []
        # Mean Puts per group commit in each round: what a commit costs is shared by its Puts,
        # so the CPU per Put depends on it (a faster disk makes smaller groups).
        group: list[float | None] = []
        for i in range(rounds):
            echo_load = await load(
                children, f"echo-load-{i}", echo_address, "echo", cluster.tls_dir, load_seconds, value_bytes
            )
            before = await node.histogram(BATCH_METRIC, {})
            put_load = await load(
                children, f"put-load-{i}", node.address, "put", cluster.tls_dir, load_seconds, value_bytes
            )
            after = await node.histogram(BATCH_METRIC, {})
            batches = after.minus(before) if after else None
            cpu.append((cpu_us_per_call(echo_load, "echo"), cpu_us_per_call(put_load, f"node-{SOLO_REGION}")))
            group.append(batches.total / batches.count if batches and batches.count else None)
            print(
                f"round {i + 1}: echo {echo_load.rate:.0f} calls/s, Put {put_load.rate:.0f}/s "
                f"({put_load.errors} errors); cores {put_load.cpu_cores}",
                file=sys.stderr,
            )
    finally:
        await cluster.close()
        await children.stop_all()
    _, echo99 = p50_p99(echo_ms)
    _, fs99 = p50_p99(fsync_ms)
    put50, put99 = p50_p99(put_ms)
    floor99 = echo99 + 2 * fs99
    print(f"echo p99 {echo99:.3f} ms, fdatasync p99 {fs99:.3f} ms, Put p50 {put50:.3f} ms p99 {put99:.3f} ms")
    print(f"durable Put p99 / (echo p99 + 2 x fdatasync p99) = {put99 / floor99:.2f} (target <= 1.0)")
    seq_put, seq_echo = put_seq.us_per_call(), echo_seq.us_per_call()
    if seq_put is not None and seq_echo is not None:
        print(
            f"one call at a time: node CPU per Put {seq_put:.0f} us, echo CPU per call {seq_echo:.0f} us, "
            f"difference {seq_put - seq_echo:.0f} us (each Put a group commit of its own)"
        )
    for i, ((echo_us, put_us), mean_group) in enumerate(zip(cpu, group, strict=True)):
        if echo_us is None or put_us is None:
            print(f"round {i + 1}: no CPU figure (a process was not measured)")
            continue
        grouped = "n/a" if mean_group is None else f"{mean_group:.1f}"
        print(
            f"round {i + 1}: node CPU per Put {put_us:.0f} us, echo CPU per call {echo_us:.0f} us, "
            f"difference {put_us - echo_us:.0f} us (target <= {PUT_CPU_SLACK_US:.0f}); "
            f"{grouped} Puts per group commit"
        )
    shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.call_cost", description=__doc__)
    parser.add_argument("--samples", type=int, default=2000, help="sequential calls per latency figure")
    parser.add_argument("--load-seconds", type=float, default=8.0, help="duration of each load (8 s)")
    parser.add_argument("--rounds", type=int, default=2, help="echo and Put load pairs (2)")
    parser.add_argument("--value-bytes", type=int, default=256, help="value size (256)")
    a = parser.parse_args(argv)
    if not (2 <= a.samples <= 1_000_000 and 0 < a.load_seconds <= 600 and 1 <= a.rounds <= 20):
        parser.error("--samples 2 to 1000000, --load-seconds above 0 up to 600, --rounds 1 to 20")
    return asyncio.run(measure(a.samples, a.load_seconds, a.rounds, a.value_bytes))


if __name__ == "__main__":
    sys.exit(main())
