"""What a group commit's audit entries cost the audit log: a batch of carried entries wakes the
event loop only when someone waits for it, and group commits that queue up while the audit
writer is busy share one audit transaction and one signed head, which covers every entry."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from domicile.audit import AuditEntry, SignedHead, public_key_bytes, verify_log
from domicile.errors import Unavailable
from domicile.single_writer import SingleWriter
from node.compliance import audit_log
from node.compliance.audit_log import HEAD_OFFER_MAX_S, load_or_create_keys
from tests.support.audit_logs import group, new_audit_log

WAIT_S = 20.0


class Logged:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "audit.sqlite3"
        self.heads: list[SignedHead] = []
        self.log = new_audit_log(tmp_path, on_head=self.heads.append)
        self.signing, _ = load_or_create_keys(tmp_path / "keys")  # the keys the log signs with
        self.log.start()
        # Counts the event-loop wake-ups the writer asks for (each runs _settle).
        self.wakeups = 0
        settle = self.log._settle

        def counted(*args: object) -> None:
            self.wakeups += 1
            settle(*args)  # type: ignore[arg-type]

        self.log._settle = counted  # type: ignore[method-assign]


@pytest.fixture
async def logged(tmp_path: Path) -> AsyncIterator[Logged]:
    it = Logged(tmp_path)
    try:
        yield it
    finally:
        await it.log.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < deadline, f"not within {WAIT_S} s: {what}"
        await asyncio.sleep(0.01)


async def test_carried_entries_nobody_waits_for_do_not_wake_the_loop(logged: Logged) -> None:
    log = logged.log
    for first in (1, 4, 7):
        log.carry(group(first, 3), [])
    await until(lambda: log.size == 9, "9 carried entries durable")
    assert log.carried_through == 9
    assert logged.wakeups == 0
    # Negative controls: a flush() waiting for carried entries, and a recorded entry, are woken.
    log.carry(group(10, 2), [])
    await log.flush()
    await log.record(principal="client:peer", action="get")
    assert logged.wakeups >= 1
    assert log.size == 12


async def test_group_commits_queued_while_the_writer_is_busy_share_a_transaction_and_a_head(
    logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = logged.log
    # A head is also offered once the last is HEAD_OFFER_MAX_S old: on a loaded machine the
    # log's start alone can take that long, and the first batch would get a head of its own.
    # This test is about the queue rule, so the age rule is put out of its reach.
    monkeypatch.setattr(audit_log, "HEAD_OFFER_MAX_S", WAIT_S * 10)
    # Another connection holds the file's write lock: the writer takes the first group commit
    # and waits inside its transaction, as behind a slow fsync.
    blocker = sqlite3.connect(logged.path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        log.carry(group(1, 3), [])
        await until(lambda: log.queued_entries == 0, "the writer took the first group")
        for first in (4, 7, 10, 13):
            log.carry(group(first, 3), [])
        await asyncio.sleep(0.05)
        assert log.size == 0 and log.queued_entries == 12
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await until(lambda: log.size == 15, "15 carried entries durable")
    await until(lambda: bool(logged.heads), "a head offered")
    # Two transactions for five group commits; one head for all of them (the first batch's
    # head is owed to the next batch, which followed at once).
    assert log.batches_committed == 2
    assert [head.size for head in logged.heads] == [15]
    head = logged.heads[-1]
    assert head.signature_valid()
    report = verify_log(log.iter_all(), head, trusted_public_key=public_key_bytes(logged.signing))
    assert report.ok and report.anchored_size == 15
    assert [AuditEntry.decode(e.body).key for e in log.iter_all()] == [f"k{n}" for n in range(1, 16)]


async def test_a_flush_waiting_for_carried_entries_from_another_thread_is_always_woken(
    logged: Logged,
) -> None:
    # flush() registers its waiter while the writer may be appending: it must never miss the
    # wake-up (the writer only wakes the loop when a waiter exists).
    log = logged.log
    for round_ in range(200):
        first = 1 + round_ * 2
        thread = threading.Thread(target=log.carry, args=(group(first, 2), []))
        thread.start()
        thread.join()
        await asyncio.wait_for(log.flush(), WAIT_S)
        assert log.carried_through == first + 1, f"round {round_}"


async def test_regression_a_head_is_offered_while_entries_keep_arriving(
    logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under a steady load the audit writer may find entries waiting after every batch; each
    # batch's head was then left to the next, without end, and no head reached the exporter.
    # The queue is held non-empty here (as such a load would), so only the time bound offers.
    monkeypatch.setattr(SingleWriter, "queued", property(lambda self: 1))
    log = logged.log
    offered = len(logged.heads)
    for first in range(1, 61, 3):
        log.carry(group(first, 3), [])
        await asyncio.sleep(HEAD_OFFER_MAX_S / 5)
    await until(lambda: log.size == 60, "60 carried entries durable")
    late = [head for head in logged.heads[offered:] if head.size > 0]
    assert len(late) >= 2, f"{len(late)} heads offered over {log.size} entries while entries kept arriving"
    assert all(
        head.signature_valid() and head.public_key == public_key_bytes(logged.signing) for head in late
    )


async def test_regression_a_flush_waiting_for_carried_entries_fails_when_the_writer_stops(
    logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer that stopped for a reason other than a failed append of carried entries (here an
    # error no handler expects) never appended them; a flush() waiting for them hung for ever.
    log = logged.log
    gate = threading.Event()

    def broken(batch: object) -> None:
        gate.wait(WAIT_S)
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(log, "_commit", broken)
    log.carry(group(1, 2), [])
    flush = asyncio.create_task(log.flush())
    await until(lambda: bool(log._carry_waiters), "the flush waits for the carried entries")
    gate.set()
    with pytest.raises(Unavailable, match="the disk went away"):
        await asyncio.wait_for(flush, WAIT_S)
    # After the stop, more carried entries and a flush are refused at once.
    with pytest.raises(Unavailable, match="cannot write"):
        log.carry(group(3, 1), [])
    with pytest.raises(Unavailable, match="cannot write"):
        await asyncio.wait_for(log.flush(), WAIT_S)
