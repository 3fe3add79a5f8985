"""A store copied back by hand from an older copy: the node finds at start that its store is
behind the log position it had reported to the coordinator and becomes a new incarnation, so no
dot is handed out twice, and it gets its later writes back from its peer. With the check turned
off, the same sequence hands out a dot again and the peer drops the write as a duplicate: what
the check prevents."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster, eventually

WEST, CENTRAL = "eu-west-1", "eu-central-1"
NS = "prefs_eu"


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [WEST, CENTRAL])
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def rewind_west(cluster: LocalCluster, tmp_path: Path, **overrides: object) -> tuple[str, int]:
    """Writes, copies west's store, writes more (reaching central and reported to the
    coordinator), then puts the copy back and restarts west. Returns the dot of the write made
    after the copy on key `later`."""
    await cluster.put(WEST, NS, "before", b"before the copy")
    await cluster.stop_node(WEST)
    shutil.copytree(tmp_path / WEST, tmp_path / "copy")
    await cluster.start_node(WEST)
    later = await cluster.put(WEST, NS, "later", b"after the copy")
    await cluster.put(WEST, NS, "before", b"rewritten after the copy")

    async def at_central() -> bool:
        return await cluster.values(CENTRAL, NS, "later") == {b"after the copy"}

    await eventually(at_central, 10, "the write after the copy at eu-central-1")
    assert cluster.coordinator is not None
    registry = cluster.coordinator.registry
    last_lsn = cluster.nodes[WEST].engine.last_lsn()

    async def reported() -> bool:
        return registry.log_head(WEST, 0) >= last_lsn

    await eventually(reported, 10, "the coordinator told of west's log position")
    await cluster.stop_node(WEST)
    shutil.rmtree(tmp_path / WEST)
    shutil.copytree(tmp_path / "copy", tmp_path / WEST)
    await cluster.start_node(WEST, **overrides)
    return later.version.dot.node_id, later.version.dot.counter


async def test_a_store_copied_back_becomes_a_new_incarnation_and_reuses_no_dot(
    pair: LocalCluster, tmp_path: Path
) -> None:
    old_dot = await rewind_west(pair, tmp_path)
    west = pair.nodes[WEST]
    assert west.rewound and west.epoch > 0
    (lost,) = (await pair.get(CENTRAL, NS, "later")).versions
    again = await pair.put(WEST, NS, "later", b"written after the rewind")
    new_dot = (again.version.dot.node_id, again.version.dot.counter)
    assert new_dot != old_dot and new_dot[0] == f"{WEST}.{west.epoch}", new_dot
    # Regression: the clock resumed from the copied ceiling file and stamped this write below
    # the write the copy lost (made within the same second), so under lww the lost write won.
    assert again.version.hlc > lost.hlc, (again.version.hlc, lost.hlc)

    # The peer takes the new write (not a duplicate of the old one), and west gets back, by the
    # anti-entropy it starts at once, the write it lost with the copy.
    async def central_has_it() -> bool:
        return await pair.values(CENTRAL, NS, "later") == {b"written after the rewind"}

    async def west_has_it_back() -> bool:
        return await pair.values(WEST, NS, "before") == {b"rewritten after the copy"}

    await eventually(central_has_it, 10, "the write after the rewind at eu-central-1")
    await eventually(west_has_it_back, 20, "the write lost with the copy back at eu-west-1")


async def test_without_the_check_a_store_copied_back_hands_out_a_dot_again(
    pair: LocalCluster, tmp_path: Path
) -> None:
    old_dot = await rewind_west(pair, tmp_path, rewind_check=False)
    west = pair.nodes[WEST]
    assert not west.rewound and west.epoch == 0
    again = await pair.put(WEST, NS, "later", b"written after the rewind")
    assert (again.version.dot.node_id, again.version.dot.counter) == old_dot
    # Acknowledged at west, never taken by the peer: the same dot is already there.
    await pair.nodes[WEST].entropy.round_with(CENTRAL)
    assert await pair.values(CENTRAL, NS, "later") == {b"after the copy"}
