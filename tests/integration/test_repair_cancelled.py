"""A repair whose caller is cancelled while it commits (a backfill restarted by a new revision,
a repair call's deadline, a round cut short): the commit lands all the same, and the digest
trees must hear of the keys it changed, or a divergence stays hidden (or shows for good)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.wire.records import mutation_to_pb
from node.daemon import Node
from node.replication.digest_tree import bucket_of
from tests.integration.test_antientropy import ghost_write, plant
from tests.support.cluster import LocalCluster, eventually

EU = ["eu-west-1", "eu-central-1"]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, EU)
    c.node_overrides["antientropy_interval_s"] = 0
    await c.start_linked()
    try:
        yield c
    finally:
        await c.stop()


def tree_has(node: Node, namespace: str, key: str) -> bool:
    return any(leaf.key == key for leaf in node.trees.leaves(namespace, [bucket_of(key)]))


async def _block_writer(node: Node) -> tuple[threading.Event, asyncio.Future[object]]:
    """Holds the node's writer thread until the event is set, so that a commit queues behind."""
    gate = threading.Event()
    blocker = asyncio.ensure_future(node.committer.run(lambda engine: gate.wait(20)))
    await asyncio.sleep(0.1)
    return gate, blocker


@pytest.mark.parametrize("cancel", [True, False], ids=["cancelled", "negative-control"])
async def test_a_repair_cancelled_while_it_commits_still_tells_the_digest_tree(
    pair: LocalCluster, cancel: bool
) -> None:
    """Regression: a pull cancelled while its shielded commit ran left the commit in the store
    but the key out of the digest tree, so a peer comparing trees never pulled the record."""
    west, central = pair.nodes["eu-west-1"], pair.nodes["eu-central-1"]
    await central.entropy.refresh()
    await west.entropy.refresh()
    m = ghost_write(central, "prefs_eu", "k-lost", b"only here")
    gate, blocker = await _block_writer(central)
    repair = asyncio.ensure_future(central.receiver.apply_repair("ghost", [mutation_to_pb(m)]))
    await asyncio.sleep(0.3)  # checked, sealed, audited; its commit queued behind the blocker
    if cancel:
        repair.cancel()  # e.g. the backfill restarted by a new revision, a repair RPC's deadline
    gate.set()
    await blocker
    if not cancel:
        await repair

    async def landed() -> bool:
        return central.engine.get("prefs_eu", "k-lost") is not None

    await eventually(landed, 5.0, "the shielded commit to land")
    await central.entropy.refresh()
    # The record is in eu-central-1's store; eu-west-1 lacks it. A round pulls it, if the tree
    # knows it.
    [check] = await west.entropy.check("eu-central-1", ["prefs_eu"], 100)
    await west.entropy.round_with("eu-central-1")
    assert west.engine.get("prefs_eu", "k-lost") is not None, (
        "eu-west-1 never pulled k-lost: eu-central-1's tree has it="
        f"{tree_has(central, 'prefs_eu', 'k-lost')}, check saw divergent={check.divergent_total}"
    )


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "negative-control"])
async def test_a_backfill_restarted_while_it_commits_leaves_no_key_divergent(
    pair: LocalCluster, restart: bool
) -> None:
    """Regression, by the code's own trigger: a newer revision restarted the backfill while its
    pull committed; the stores ended equal, but the tree never learned the key, and every later
    check reported it divergent (a re-pulled state is a duplicate: nothing marks it again)."""

    west, central = pair.nodes["eu-west-1"], pair.nodes["eu-central-1"]
    await plant(west, [ghost_write(west, "prefs_eu", "k-bf", b"held by west only")])
    await central.entropy.refresh()
    gate, blocker = await _block_writer(central)
    central.backfill.start({("eu-west-1", "prefs_eu")})
    await asyncio.sleep(0.5)  # the job pulled k-bf; its commit waits behind the blocker
    if restart:
        central.backfill.start({("eu-west-1", "prefs_eu")})  # a newer revision: the job starts over
    gate.set()
    await blocker
    await central.backfill.wait()
    assert central.engine.get("prefs_eu", "k-bf") is not None  # both stores hold the same state
    for _ in range(2):
        await central.entropy.round_with("eu-west-1")
    [check] = await central.entropy.check("eu-west-1", ["prefs_eu"], 100)
    assert check.divergent_total == 0, (
        f"stores agree, yet the check reports {check.divergent} divergent for good; "
        f"eu-central-1's tree has k-bf={tree_has(central, 'prefs_eu', 'k-bf')}"
    )
