"""Anti-entropy benchmark: how long one round takes to repair N divergent keys (10,000 by
default) between two nodes, next to a baseline of the same run: the engine merging the same
key states directly (apply_remote in batches of 500, no network, no policy, no audit).

    .venv/bin/python -m bench.antientropy [--keys 10000] [--value-bytes 100] [--out FILE]

A coordinator and two nodes (eu-west-1, eu-central-1) run in this process on free ports,
plaintext (`--insecure`: the figure is the round's own work, not TLS), SQLite with
synchronous FULL, periodic rounds off. The divergence is what anti-entropy exists for: N
writes of an origin that died after reaching only eu-west-1 (applied to its store through its
writer and marked in its digest trees). The timed round runs at eu-central-1: compare trees,
fetch the key digests of the buckets that differ, pull the N states (each version decided and
audited at both ends), seal, merge, commit. Then a round that finds nothing to repair, and the
consistency check of the pair, are timed too. Figures go to stdout and, as JSON, to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from coordinator.config import CoordinatorConfig
from coordinator.daemon import Coordinator
from domicile.causality import CausalContext, Dot, Mutation, Version, sha256
from domicile.hlc import HybridClock
from domicile.ports import free_port
from node.config import NodeConfig
from node.daemon import Node
from node.engine.sqlite import SQLiteEngine

NAMESPACE = "bench_entropy"
SOURCE, TARGET = "eu-west-1", "eu-central-1"
APPLY_BATCH = 500


def ghost_writes(keys: int, value_bytes: int, clock: HybridClock) -> list[Mutation]:
    """Writes of an origin that is gone: one version per key, dots ghost:1..N."""
    out = []
    for i in range(keys):
        value = (b"%08d" % i).ljust(value_bytes, b".")
        version = Version(Dot("ghost", 1), value, clock.now(), checksum=sha256(value), origin_region=SOURCE)
        out.append(
            Mutation(NAMESPACE, f"key-{i:08d}", CausalContext.empty(), version, origin_node_id="ghost")
        )
    return out


def engine_floor(root: Path, mutations: list[Mutation]) -> float:
    """Seconds the engine alone takes to merge the same states (the baseline)."""
    engine = SQLiteEngine(str(root / "floor.sqlite3"), "floor", TARGET, synchronous="FULL")
    try:
        started = time.perf_counter()
        for i in range(0, len(mutations), APPLY_BATCH):
            engine.apply_remote("ghost", mutations[i : i + APPLY_BATCH], 0)
        return time.perf_counter() - started
    finally:
        engine.close()


async def wait_linked(target: Node, source_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while source_id not in target.entropy.peers(target.view.topology):
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{target.config.node_id} did not learn a link from {source_id} in {timeout_s} s"
            )
        await asyncio.sleep(0.05)


async def run(keys: int, value_bytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="domicile-bench-entropy-") as tmp:
        root = Path(tmp)
        config = root / "cluster.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "policy_version": "bench-entropy-1",
                    "regions": [
                        {"name": SOURCE, "country": "IE", "jurisdiction": "EU"},
                        {"name": TARGET, "country": "DE", "jurisdiction": "EU"},
                    ],
                    "namespaces": [
                        {"name": NAMESPACE, "regions": [SOURCE, TARGET], "classification": "public"}
                    ],
                }
            )
        )
        coordinator_address = f"127.0.0.1:{free_port()}"
        coordinator = Coordinator(
            CoordinatorConfig(
                cluster_config=config,
                listen=coordinator_address,
                metrics_port=0,
                data_dir=root / "coordinator",
                insecure=True,
            )
        )
        await coordinator.start()
        nodes: dict[str, Node] = {}
        try:
            for region in (SOURCE, TARGET):
                node = Node(
                    NodeConfig(
                        region=region,
                        listen=f"127.0.0.1:{free_port()}",
                        metrics_port=0,
                        data_dir=str(root / region),
                        coordinator=coordinator_address,
                        cluster_config=str(config),
                        insecure=True,
                        antientropy_interval_s=0,
                    )
                )
                await node.start()
                nodes[region] = node
            source, target = nodes[SOURCE], nodes[TARGET]
            await wait_linked(target, SOURCE)
            mutations = ghost_writes(keys, value_bytes, source.clock)
            floor_s = await asyncio.to_thread(engine_floor, root, mutations)
            for i in range(0, keys, APPLY_BATCH):
                batch = mutations[i : i + APPLY_BATCH]
                await source.committer.run(lambda e, b=batch: e.apply_remote("ghost", b, 0))  # type: ignore[misc]
                source.trees.mark([(m.namespace, m.key) for m in batch])
            # Both trees up to date before the clock starts: the round measures the exchange.
            await source.entropy.refresh()
            await target.entropy.refresh()

            started = time.perf_counter()
            [result] = await target.entropy.round_with(SOURCE)
            repair_s = time.perf_counter() - started
            if result.repaired != keys:
                raise SystemExit(f"the round repaired {result.repaired} keys, not {keys}")
            started = time.perf_counter()
            [idle] = await target.entropy.round_with(SOURCE)
            idle_s = time.perf_counter() - started
            started = time.perf_counter()
            [check] = await target.entropy.check(SOURCE, [NAMESPACE], 100)
            check_s = time.perf_counter() - started
            if idle.repaired or check.divergent_total:
                raise SystemExit("the replicas still differ after the round")
            return {
                "keys": keys,
                "value_bytes": value_bytes,
                "repair_s": repair_s,
                "repair_keys_per_s": keys / repair_s,
                "engine_floor_s": floor_s,
                "repair_over_floor": repair_s / floor_s,
                "idle_round_s": idle_s,
                "consistency_check_s": check_s,
                "keys_compared": result.compared,
            }
        finally:
            for node in nodes.values():
                await node.stop(grace_s=0.1)
            await coordinator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=10_000, help="divergent keys (default: %(default)s)")
    parser.add_argument("--value-bytes", type=int, default=100, help="bytes per value (default: %(default)s)")
    parser.add_argument(
        "--out", default="bench/results/antientropy.json", help="JSON figures (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.keys <= 1_000_000:
        parser.error("--keys must be 1 to 1000000")
    logging.basicConfig(level=logging.ERROR)
    figures = asyncio.run(run(args.keys, args.value_bytes))
    f = figures
    print(f"anti-entropy repair of {f['keys']:,} divergent keys ({f['value_bytes']} B values)")
    rate = f"{f['repair_keys_per_s']:,.0f} keys/s"
    print(f"  one round, repairing them        {f['repair_s']:8.2f} s  ({rate})")
    ratio = f"round / baseline = {f['repair_over_floor']:.1f}x"
    print(f"  baseline: engine merge alone     {f['engine_floor_s']:8.2f} s  ({ratio})")
    print(f"  a round with nothing to repair   {f['idle_round_s']:8.2f} s")
    print(f"  consistency check of the pair    {f['consistency_check_s']:8.2f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
