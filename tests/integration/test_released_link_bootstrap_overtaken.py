"""Regression: A link released by the hold limit (its target was away longer than changelog_hold_max_s)
stays released while the returning target is being bootstrapped: the sender is not `connected`
until the bootstrap ends, and its acknowledged position is the one it had when it was released.
So the truncation passes that run during the bootstrap leave the link out and truncate the log
past the bootstrap's snapshot position. When the bootstrap ends, the position the target was
just moved to is no longer in the log: the session fails ("the change log no longer holds
position ...") and the target is bootstrapped all over again. Under a steady write load, every
bootstrap that lasts longer than a truncation interval is overtaken the same way: the link never
gets back to streaming.

The test models "the bootstrap lasts longer than a truncation interval while writes go on" by
doing, just before the target applies the bootstrap's last part, a few writes at the source and
one truncation pass (what the periodic pass does meanwhile). The in-memory tail is kept small, as
a busy node's tail is short against what it commits during a long bootstrap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.model import Limits
from domicile.topology import NodeInfo
from domicile.v1 import replication_pb2 as rpb
from node.replication.bootstrap import SnapshotTarget
from tests.support.cluster import LocalCluster, eventually

SOURCE = "eu-west-1"
REPLICA = "eu-central-1"
NS = "prefs_eu"
HOLD_MAX_S = 1.0


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [SOURCE, REPLICA])
    cluster.node_overrides.update(
        antientropy_interval_s=0,
        changelog_truncate_interval_s=0,
        changelog_hold_max_s=HOLD_MAX_S,
        limits=Limits(log_tail_records_max=2),
    )
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def put_many(cluster: LocalCluster, prefix: str, n: int) -> None:
    for i in range(n):
        await cluster.put(SOURCE, NS, f"{prefix}{i}", f"{prefix}-{i}".encode())


async def test_truncation_during_the_bootstrap_of_a_released_link_does_not_pass_its_snapshot(
    pair: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = pair.nodes[SOURCE]
    await put_many(pair, "a", 10)
    last = await asyncio.to_thread(source.engine.last_lsn)
    await eventually(
        lambda: _true(source.replication.senders[REPLICA].acked_lsn >= last), 10, "the replica acknowledged"
    )

    # The replica goes away past the hold limit: its link is released, the log truncated past it.
    await pair.stop_node(REPLICA)
    await put_many(pair, "b", 10)
    await source.truncator.pass_once()
    await asyncio.sleep(HOLD_MAX_S + 0.2)
    last = await asyncio.to_thread(source.engine.last_lsn)
    assert (await source.truncator.pass_once()).lsn == last
    assert source.truncator.hold_limit is not None
    assert source.truncator.hold_limit.released == {REPLICA}

    # Meanwhile (while the bootstrap runs): writes go on and the periodic truncation pass runs.
    seen: dict[str, int] = {}
    real_apply = SnapshotTarget.apply

    async def apply(
        self: SnapshotTarget, src: str, source_node: NodeInfo, part: rpb.ReplicationSnapshot
    ) -> int:
        if part.last and "snapshot_lsn" not in seen:
            seen["snapshot_lsn"] = part.snapshot_lsn
            await put_many(pair, "c", 5)
            seen["log_start_meanwhile"] = (await source.truncator.pass_once()).lsn
        return await real_apply(self, src, source_node, part)

    monkeypatch.setattr(SnapshotTarget, "apply", apply)
    replica = await pair.start_node(REPLICA)

    async def caught_up() -> bool:
        states = await asyncio.to_thread(replica.engine.get_many, NS, [f"c{i}" for i in range(5)])
        return len(states) == 5 and all(s.has_live() for s in states.values())

    await eventually(caught_up, 20, "the replica has the writes made during its bootstrap")
    await pair.put(SOURCE, NS, "after", b"streamed")
    last = await asyncio.to_thread(source.engine.last_lsn)

    async def streaming() -> bool:
        return await asyncio.to_thread(replica.engine.inbound_position, SOURCE) >= last

    await eventually(streaming, 20, "streaming resumed after the bootstrap(s)")
    bootstraps = source.metrics.bootstraps.labels(SOURCE, REPLICA, "source")._value.get()
    # While the bootstrap was under way, its link must hold the log at what the target will hold
    # once it ends (the snapshot's position), or the bootstrap is wasted.
    assert seen["log_start_meanwhile"] <= seen["snapshot_lsn"], (
        f"while the replica was being bootstrapped to position {seen['snapshot_lsn']}, the source "
        f"truncated its change log through {seen['log_start_meanwhile']}; the replica had to be "
        f"bootstrapped {bootstraps:.0f} times"
    )
    assert bootstraps == 1


async def _true(value: bool) -> bool:
    return value
