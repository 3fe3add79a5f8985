"""The audit log holds the entries a store's commits carried (durable in the store's outbox
already) for the next ones, so that the group commits of CARRY_LINGER_S share one audit
transaction; whatever someone waits for (a flush, a recorded entry, a direct entry) is written
at once, and close() writes what lingers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from domicile.audit import AuditEntry, verify_log
from domicile.single_writer import LINGER_MAX_S
from node.compliance.audit_log import CARRY_LINGER_S, AuditLog
from tests.support.audit_logs import entry, group, new_audit_log

WAIT_S = 20.0


def open_log(tmp_path: Path, linger_s: float) -> AuditLog:
    log = new_audit_log(tmp_path, carry_linger_s=linger_s)
    log.start()
    return log


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Callable[[float], AuditLog]]:
    logs: list[AuditLog] = []

    def make(linger_s: float) -> AuditLog:
        log = open_log(tmp_path / f"log{len(logs)}", linger_s)
        logs.append(log)
        return log

    yield make
    for log in logs:
        await log.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        await asyncio.sleep(0.005)


def keys(log: AuditLog) -> list[str]:
    return [AuditEntry.decode(e.body).key for e in log.iter_all()]


async def test_carried_entries_of_group_commits_within_the_linger_share_one_transaction(
    opened: Callable[[float], AuditLog],
) -> None:
    assert 0 < CARRY_LINGER_S <= LINGER_MAX_S
    log = opened(LINGER_MAX_S)
    for first in range(1, 16, 3):
        log.carry(group(first, 3), [])
    await until(lambda: log.size == 15, "15 carried entries durable")
    assert log.batches_committed == 1
    assert log.carried_through == 15
    assert keys(log) == [f"k{n}" for n in range(1, 16)]
    assert verify_log(log.iter_all(), None).ok


async def test_negative_control_without_a_linger_each_group_commit_is_a_transaction(
    opened: Callable[[float], AuditLog],
) -> None:
    log = opened(0.0)
    for first in range(1, 16, 3):
        log.carry(group(first, 3), [])
        await until(lambda last=first + 2: log.carried_through == last, f"group from {first} durable")
    assert log.batches_committed == 5


async def test_a_flush_does_not_wait_for_the_linger(opened: Callable[[float], AuditLog]) -> None:
    log = opened(LINGER_MAX_S)
    since = time.monotonic()
    log.carry(group(1, 3), [])
    await asyncio.wait_for(log.flush(), WAIT_S)
    assert log.carried_through == 3 and log.size == 3
    assert time.monotonic() - since < LINGER_MAX_S, "flush() waited for the linger to end"


async def test_a_recorded_entry_ends_the_linger_and_follows_the_carried_ones(
    opened: Callable[[float], AuditLog],
) -> None:
    log = opened(LINGER_MAX_S)
    since = time.monotonic()
    log.carry(group(1, 3), [])
    seq = await asyncio.wait_for(
        log.record(principal="client:peer", action="get", namespace="orders", key="read"), WAIT_S
    )
    assert time.monotonic() - since < LINGER_MAX_S, "record() waited for the linger to end"
    assert seq == 4
    assert keys(log) == ["k1", "k2", "k3", "read"]
    assert log.batches_committed == 1


async def test_a_direct_entry_is_held_nowhere_else_and_is_not_left_to_linger(
    opened: Callable[[float], AuditLog],
) -> None:
    # The entry of a write that did not commit is in no store's outbox: it is written at once.
    log = opened(LINGER_MAX_S)
    since = time.monotonic()
    log.carry(group(1, 2), [entry("refused")])
    await until(lambda: log.size == 3, "the direct entry and the carried ones before it durable")
    assert time.monotonic() - since < LINGER_MAX_S, "a direct entry waited for the linger to end"
    assert keys(log) == ["k1", "k2", "refused"]


async def test_close_writes_the_lingering_entries(tmp_path: Path) -> None:
    log = open_log(tmp_path, LINGER_MAX_S)
    log.carry(group(1, 4), [])
    await log.close()
    again = open_log(tmp_path, LINGER_MAX_S)
    try:
        assert again.size == 4 and again.carried_through == 4
        assert keys(again) == ["k1", "k2", "k3", "k4"]
    finally:
        await again.close()


def record_sends(log: AuditLog, count: int, *, urgent: bool) -> list[asyncio.Future[int]]:
    """Entries like a replication send's batch entries, which the send does not wait for."""
    return [
        log.record(
            principal="node:n", action="replicate_send", namespace="orders", detail=f"b{i}", urgent=urgent
        )
        for i in range(count)
    ]


async def test_entries_recorded_without_urgency_linger_with_the_carried_ones(
    opened: Callable[[float], AuditLog],
) -> None:
    log = opened(LINGER_MAX_S)
    log.carry(group(1, 3), [])
    sends = record_sends(log, 3, urgent=False)
    log.carry(group(4, 3), [])
    await asyncio.wait_for(asyncio.gather(*sends), WAIT_S)
    await until(lambda: log.size == 9, "9 entries durable")
    assert log.batches_committed == 1
    assert [await s for s in sends] == [4, 5, 6]


async def test_negative_control_urgent_recorded_entries_end_the_linger(
    opened: Callable[[float], AuditLog],
) -> None:
    log = opened(LINGER_MAX_S)
    since = time.monotonic()
    log.carry(group(1, 3), [])
    sends = record_sends(log, 3, urgent=True)
    await asyncio.wait_for(asyncio.gather(*sends), WAIT_S)
    # Durable at once, where without urgency they wait for the linger's end or the next carried
    # group (the test above). How many transactions that took depends on when the writer woke.
    assert time.monotonic() - since < LINGER_MAX_S, "urgent entries waited for the linger to end"
    assert log.size == 6
    log.carry(group(4, 3), [])
    await until(lambda: log.size == 9, "9 entries durable")
    assert log.batches_committed >= 2


async def test_a_flush_does_not_wait_for_a_lingering_recorded_entry(
    opened: Callable[[float], AuditLog],
) -> None:
    log = opened(LINGER_MAX_S)
    since = time.monotonic()
    [send] = record_sends(log, 1, urgent=False)
    await asyncio.wait_for(log.flush(), WAIT_S)
    assert send.done() and send.result() == 1
    assert time.monotonic() - since < LINGER_MAX_S, "flush() waited for the linger to end"
