"""Backpressure of carried audit entries: the store's writer does not commit writes whose entries
the audit log would carry while that log is behind (node.compliance.audit_log wait_carry_room),
so the entries queued in memory stay bounded; a commit that finds no room in time is refused
whole, and nothing of it is written."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from domicile.errors import Unavailable
from domicile.hlc import HybridClock
from node.compliance.audit_log import AuditLog
from node.engine.base import LocalWrite
from node.engine.group_commit import GroupCommitter
from node.engine.sqlite import SQLiteEngine
from tests.support.audit_logs import NODE, REGION, entry, new_audit_log
from tests.support.cluster import LocalCluster, eventually

# The log's queue: carried entries wait for room at half of it.
QUEUE_ENTRIES = 8
ROOM_BELOW = QUEUE_ENTRIES // 2


@dataclass
class Store:
    engine: SQLiteEngine
    log: AuditLog
    committer: GroupCommitter
    # Set: the audit writer thread is held before each batch it writes.
    held: threading.Event
    release: threading.Event


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, REGION)
    log = new_audit_log(tmp_path, queue_entries_max=QUEUE_ENTRIES, batch_entries_max=2)
    held, release = threading.Event(), threading.Event()
    write_batch = log._writer._handle  # the audit writer's own commit

    def held_write(batch: list[object]) -> None:
        held.set()
        release.wait(30)
        write_batch(batch)

    log._writer._handle = held_write
    log.start(engine.audit_outbox)
    engine.audit_settled = lambda: log.carried_through
    committer = GroupCommitter(
        engine, HybridClock().now, batch_records_max=1, queue_records_max=64, on_audit=log.carry
    )
    committer.start()
    try:
        yield Store(engine, log, committer, held, release)
    finally:
        release.set()
        await committer.stop()
        await log.close()
        engine.close()


def audited(key: str) -> LocalWrite:
    return LocalWrite("orders", key, b"v", audit=entry(key))


# Past the mark even with a batch taken by the held audit writer.
BEHIND = ROOM_BELOW + 3


async def fill_log(store: Store, writes: int = BEHIND) -> None:
    """Commits `writes` single-record batches while the audit writer is held (before the
    committer asks for room: the fill itself would wait)."""
    for i in range(writes):
        await store.committer.submit(audited(f"fill-{i}"))
    await asyncio.to_thread(store.held.wait, 10)


async def test_without_the_wait_carried_entries_pile_up_past_the_log_queue(store: Store) -> None:
    # Negative control: carry() alone bounds nothing (the store's writer runs ahead).
    await fill_log(store, QUEUE_ENTRIES * 3)
    assert store.log._writer.queued >= QUEUE_ENTRIES * 2


async def test_a_commit_waits_for_the_log_then_goes_on(store: Store) -> None:
    await fill_log(store)
    assert store.log._writer.queued >= ROOM_BELOW
    store.committer.audit_room = lambda: store.log.wait_carry_room(timeout_s=30)
    pending = asyncio.ensure_future(store.committer.submit(audited("late")))
    await asyncio.sleep(0.3)
    assert not pending.done(), "the store committed while the audit log was behind"
    store.release.set()
    committed = await asyncio.wait_for(pending, 30)
    assert committed.mutation.key == "late"
    assert store.log._writer.queued <= QUEUE_ENTRIES


async def test_a_commit_without_room_in_time_is_refused_and_writes_nothing(store: Store) -> None:
    await fill_log(store)
    store.committer.audit_room = lambda: store.log.wait_carry_room(timeout_s=0.2)
    last = store.engine.last_lsn()
    with pytest.raises(Unavailable, match=r"audit log has \d+ entries waiting"):
        await store.committer.submit(audited("refused"))
    assert store.engine.last_lsn() == last
    assert store.engine.get("orders", "refused") is None
    # The log catches up: the next write commits.
    store.release.set()
    store.committer.audit_room = lambda: store.log.wait_carry_room(timeout_s=30)
    assert (await store.committer.submit(audited("after"))).mutation.key == "after"


async def test_writes_that_carry_no_entry_never_wait(store: Store) -> None:
    await fill_log(store)
    store.committer.audit_room = lambda: store.log.wait_carry_room(timeout_s=30)
    committed = await asyncio.wait_for(store.committer.submit(LocalWrite("orders", "plain", b"v")), 10)
    assert committed.mutation.key == "plain"


async def test_a_replicated_apply_refused_for_room_arrives_once_the_log_has_room(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", ["eu-west-1", "eu-central-1"])
    await cluster.start_linked()
    try:
        target = cluster.nodes["eu-central-1"]
        asked: list[int] = []

        def behind_twice() -> None:
            asked.append(1)
            if len(asked) <= 2:
                raise Unavailable("the audit log is behind (test)")

        assert target.receiver.carry_room is not None  # the node wires the log's wait in
        target.receiver.carry_room = behind_twice
        await cluster.put("eu-west-1", "prefs_eu", "k", b"v")

        async def arrived() -> bool:
            return await cluster.values("eu-central-1", "prefs_eu", "k") == {b"v"}

        await eventually(arrived, 20, "the record after two refused applies")
        assert len(asked) >= 3
        stats = target.receiver.stats
        assert sum(s.applied_total for s in stats.values()) == 1  # applied once, not lost nor twice
    finally:
        await cluster.stop()
