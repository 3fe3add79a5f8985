"""What a group commit's audit entries cost the audit log: a batch of carried entries wakes the
event loop only when someone waits for it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from domicile.audit import AuditEntry, SignedHead
from domicile.hlc import HybridClock
from node.compliance.audit_log import AuditLog, load_or_create_keys

REGION = "eu-west-1"
NODE = "eu-west-1-a"
WAIT_S = 20.0


def entry(key: str) -> AuditEntry:
    return AuditEntry(0, 1, 1, REGION, NODE, "client:peer", "put", "orders", key, decision="allow")


def group(first_lsn: int, count: int) -> list[tuple[int, AuditEntry]]:
    return [(lsn, entry(f"k{lsn}")) for lsn in range(first_lsn, first_lsn + count)]


class Logged:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "audit.sqlite3"
        self.signing, subject = load_or_create_keys(tmp_path / "keys")
        self.heads: list[SignedHead] = []
        self.log = AuditLog(
            self.path,
            region=REGION,
            node_id=NODE,
            signing_key=self.signing,
            subject_key=subject,
            hlc=HybridClock().now,
            on_head=self.heads.append,
        )
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
