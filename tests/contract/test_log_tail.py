"""The change-log tail fed by the group committer, over every engine of the contract suite: what
it serves is exactly what read_log returns, and it serves nothing it does not hold."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from domicile.causality import CausalContext, Dot, Mutation, Version
from domicile.errors import DomicileError, InvalidArgument
from node.engine.base import LocalWrite, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.engine.log_tail import ENTRY_OVERHEAD_BYTES, LogTail, entry_bytes

from .harness import EngineHarness

Stamp = Callable[[], int]
NAMESPACES = ("o", "p")


def committer_with(engine: StorageEngine, stamp: Stamp, tail: LogTail, batch: int = 64) -> GroupCommitter:
    committer = GroupCommitter(
        engine, stamp, batch_records_max=batch, queue_records_max=10_000, log_tail=tail
    )
    committer.start()
    return committer


def random_write(rng: random.Random, known: list[tuple[str, str]]) -> LocalWrite:
    """A put, a delete (what Delete, erasure and retention commit) or a write the engine
    refuses (it takes no position)."""
    roll = rng.random()
    if roll < 0.05:
        return LocalWrite(namespace="BAD", key="k", value=b"x")
    if roll < 0.25 and known:
        namespace, key = rng.choice(known)
        newest = Version(Dot("x", 1), b"", 1, subject_id=rng.choice(["", "s-1"]))
        return LocalWrite.deleting(namespace, key, newest, rng.choice([None, CausalContext.empty()]))
    namespace, key = rng.choice(NAMESPACES), f"k{rng.randrange(40)}"
    known.append((namespace, key))
    return LocalWrite(
        namespace=namespace,
        key=key,
        value=rng.randbytes(rng.choice([0, 1, 10, 300, 5000])),
        subject_id=rng.choice(["", "", "s-1", "s-2"]),
        content_type=rng.choice(["", "text/plain"]),
    )


def check_against_store(engine: StorageEngine, tail: LogTail, rng: random.Random) -> None:
    last = engine.last_lsn()
    assert tail.last_lsn == last
    held = len(tail)
    first_covered = last - held
    for after in range(0, last + 1):
        limit = rng.choice([1, 2, 7, 500, 10_000])
        served = tail.read(after, limit)
        if after < first_covered:
            assert served is None, f"tail serves after {after}, but holds only {first_covered + 1}..{last}"
            continue
        assert served is not None, f"tail holds {first_covered + 1}..{last} but not after {after}"
        entries, end = served
        assert end == last
        assert entries == engine.read_log(after, limit), f"after {after}, limit {limit}"


@pytest.mark.parametrize("bounded_by", ["records", "bytes"])
async def test_tail_serves_exactly_what_read_log_returns(
    engine: StorageEngine, stamp: Stamp, rng: random.Random, bounded_by: str
) -> None:
    records_max = rng.randrange(1, 60) if bounded_by == "records" else 10_000
    bytes_max = 1 << 40
    if bounded_by == "bytes":
        bytes_max = rng.randrange(ENTRY_OVERHEAD_BYTES, 40 * ENTRY_OVERHEAD_BYTES)
    tail = LogTail(records_max=records_max, bytes_max=bytes_max, after_lsn=engine.last_lsn())
    committer = committer_with(engine, stamp, tail, batch=rng.randrange(1, 20))
    known: list[tuple[str, str]] = []
    try:
        for _ in range(12):
            writes = [random_write(rng, known) for _ in range(rng.randrange(1, 40))]
            # Submitted together, so that the committer takes them in batches of several.
            await asyncio.gather(*(committer.submit(w) for w in writes), return_exceptions=True)
            check_against_store(engine, tail, rng)
            assert len(tail) <= records_max
            assert len(tail) == min(records_max, engine.last_lsn()) or bounded_by == "bytes"
    finally:
        await committer.stop()


async def test_refused_and_failed_writes_leave_the_tail_as_the_store(
    engine: StorageEngine, stamp: Stamp, rng: random.Random
) -> None:
    tail = LogTail(records_max=100, bytes_max=1 << 30, after_lsn=engine.last_lsn())
    committer = committer_with(engine, stamp, tail)
    try:
        await committer.submit(LocalWrite("o", "a", b"1"))
        with pytest.raises(InvalidArgument):
            await committer.submit(LocalWrite("BAD", "a", b"1"))
        with pytest.raises(DomicileError):
            await committer.submit(LocalWrite("o", "a", b"x", tombstone=True))
        await committer.submit(LocalWrite("o", "b", b"2"))
        check_against_store(engine, tail, rng)
        served = tail.read(0, 10)
        assert served is not None and [m.lsn for m in served[0]] == [1, 2]
    finally:
        await committer.stop()


async def test_a_restarted_node_serves_only_what_follows_its_restart(
    harness: EngineHarness, stamp: Stamp, rng: random.Random
) -> None:
    engine = harness.open()
    tail = LogTail(records_max=100, bytes_max=1 << 30, after_lsn=engine.last_lsn())
    committer = committer_with(engine, stamp, tail)
    for i in range(5):
        await committer.submit(LocalWrite("o", f"k{i}", b"v"))
    await committer.stop()
    engine = harness.reopen(engine)
    # The new tail starts after the store's last position: it covers that, nothing before.
    tail = LogTail(records_max=100, bytes_max=1 << 30, after_lsn=engine.last_lsn())
    assert tail.read(5, 10) == ([], 5)
    assert tail.read(4, 10) is None
    assert tail.read(0, 10) is None
    committer = committer_with(engine, stamp, tail)
    try:
        await committer.submit(LocalWrite("o", "after", b"v"))
        check_against_store(engine, tail, rng)
        assert tail.read(4, 10) is None
    finally:
        await committer.stop()


# -- the tail on its own ------------------------------------------------------------------------


def mutation(lsn: int, value: bytes = b"v") -> Mutation:
    return Mutation("o", f"k{lsn}", CausalContext.empty(), Version(Dot("n", lsn), value, lsn), lsn=lsn)


def test_a_tail_started_without_a_position_covers_nothing_until_its_first_append() -> None:
    tail = LogTail(records_max=10, bytes_max=1 << 20)
    assert tail.last_lsn is None
    assert tail.read(0, 10) is None
    tail.append([mutation(7), mutation(8)])
    assert tail.read(5, 10) is None
    assert tail.read(6, 10) == ([mutation(7), mutation(8)], 8)
    assert tail.read(7, 1) == ([mutation(8)], 8)
    assert tail.read(8, 10) == ([], 8)
    assert tail.read(9, 10) is None  # ahead of what was committed: the store answers


def test_a_hole_in_positions_drops_what_came_before_it() -> None:
    tail = LogTail(records_max=10, bytes_max=1 << 20, after_lsn=0)
    tail.append([mutation(1), mutation(2)])
    tail.append([mutation(4), mutation(5)])
    assert tail.read(2, 10) is None
    assert tail.read(3, 10) == ([mutation(4), mutation(5)], 5)
    tail.append([mutation(6), mutation(8), mutation(9)])
    assert tail.read(6, 10) is None
    assert tail.read(7, 10) == ([mutation(8), mutation(9)], 9)


def test_eviction_keeps_the_newest_within_both_bounds() -> None:
    tail = LogTail(records_max=3, bytes_max=1 << 20, after_lsn=0)
    tail.append([mutation(i) for i in range(1, 11)])
    assert len(tail) == 3
    assert tail.read(6, 10) is None
    assert tail.read(7, 10) == ([mutation(8), mutation(9), mutation(10)], 10)
    big = mutation(11, b"x" * 5000)
    tail = LogTail(records_max=100, bytes_max=entry_bytes(big) + 2 * entry_bytes(mutation(12)), after_lsn=10)
    tail.append([big, mutation(12), mutation(13)])
    assert tail.read(10, 10) == ([big, mutation(12), mutation(13)], 13)
    tail.append([mutation(14)])
    assert tail.read(10, 10) is None
    assert tail.read(11, 10) == ([mutation(12), mutation(13), mutation(14)], 14)
    # An entry heavier than the bound is not held, but its position is known.
    tail.append([mutation(15, b"x" * (1 << 20))])
    assert len(tail) == 0
    assert tail.read(14, 10) is None
    assert tail.read(15, 10) == ([], 15)


def test_many_appends_compact_and_keep_serving() -> None:
    tail = LogTail(records_max=5, bytes_max=1 << 30, after_lsn=0)
    for lsn in range(1, 20_001):
        tail.append([mutation(lsn)])
    assert tail.read(19_995, 10) == ([mutation(i) for i in range(19_996, 20_001)], 20_000)
    assert tail.read(19_994, 10) is None


def test_forget_sends_every_reader_to_the_store() -> None:
    tail = LogTail(records_max=5, bytes_max=1 << 30, after_lsn=0)
    tail.append([mutation(1)])
    tail.forget()
    assert tail.last_lsn is None
    assert tail.read(1, 10) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"records_max": 0, "bytes_max": 1}, "records_max is 0"),
        ({"records_max": 1, "bytes_max": 0}, "bytes_max is 0"),
        ({"records_max": 1, "bytes_max": 1, "after_lsn": -1}, "negative"),
    ],
)
def test_bad_bounds_are_refused(options: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        LogTail(**options)
