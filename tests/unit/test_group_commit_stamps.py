"""A batch's timestamps come from one block reserved from the clock (HybridClock.block); when
the block runs out or is empty, the group committer asks the clock for each write."""

from __future__ import annotations

from pathlib import Path

from domicile.hlc import HybridClock
from node.engine.base import Committed, LocalWrite
from node.engine.group_commit import GroupCommitter
from node.engine.sqlite import SQLiteEngine


async def commit_batch(tmp_path: Path, block_size: int) -> tuple[list[int], list[range]]:
    clock = HybridClock()
    blocks: list[range] = []

    def short_block(n: int) -> range:
        block = clock.block(n)
        blocks.append(block[:block_size])
        return blocks[-1]

    engine = SQLiteEngine(tmp_path / f"store-{block_size}.sqlite3", "n1", "eu")
    committer = GroupCommitter(
        engine, clock.now, batch_records_max=100, queue_records_max=100, stamp_block=short_block
    )
    committer.start()
    try:
        results = await committer.submit_many([LocalWrite("ns", f"k{i}", b"v") for i in range(5)])
    finally:
        await committer.stop()
        engine.close()
    assert all(isinstance(r, Committed) for r in results)
    return [r.mutation.version.hlc for r in results if isinstance(r, Committed)], blocks


async def test_a_batch_takes_its_timestamps_from_its_block(tmp_path: Path) -> None:
    hlcs, blocks = await commit_batch(tmp_path, block_size=5)
    assert len(blocks) == 1 and hlcs == list(blocks[0])


async def test_past_a_short_or_empty_block_each_write_asks_the_clock(tmp_path: Path) -> None:
    for size in (2, 0):
        hlcs, blocks = await commit_batch(tmp_path, block_size=size)
        assert hlcs[:size] == list(blocks[0])
        assert hlcs == sorted(set(hlcs)) and len(hlcs) == 5  # all distinct, in write order
