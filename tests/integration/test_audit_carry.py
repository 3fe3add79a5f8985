"""A write's audit entry committed with the write (the store's audit outbox) and appended to the
audit log after it: a log started after a crash between the two commits appends what it lacks,
once; the outbox drops what the log holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from domicile.audit import AuditEntry, verify_log
from domicile.errors import DataCorruption
from domicile.hlc import HybridClock
from node.compliance.audit_log import AuditLog
from node.engine.base import Committed, LocalWrite
from node.engine.sqlite import SQLiteEngine
from tests.support.audit_logs import NODE, REGION, entry, new_audit_log


def open_log(tmp_path: Path, engine: SQLiteEngine | None) -> AuditLog:
    log = new_audit_log(tmp_path)
    log.start(engine.audit_outbox if engine is not None else None)
    return log


def write(engine: SQLiteEngine, key: str) -> Committed:
    [result] = engine.commit_local([LocalWrite("orders", key, b"v", audit=entry(key))], HybridClock().now)
    assert isinstance(result, Committed)
    return result


def keys_in(log: AuditLog) -> list[str]:
    return [AuditEntry.decode(e.body).key for e in log.iter_all()]


async def test_a_start_appends_the_entries_only_the_store_holds_once(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, REGION)
    try:
        # The store committed two writes with their entries; the audit log never heard of them
        # (the node died between the two commits).
        first, second = write(engine, "a"), write(engine, "b")
        assert [lsn for lsn, _ in engine.audit_outbox(0)] == [first.mutation.lsn, second.mutation.lsn]
        without = open_log(tmp_path, None)
        assert keys_in(without) == []  # negative control: no recovery, no entries
        await without.close()

        log = open_log(tmp_path, engine)
        assert keys_in(log) == ["a", "b"]
        assert log.carried_through == second.mutation.lsn
        assert verify_log(log.iter_all(), None).ok
        await log.close()
        again = open_log(tmp_path, engine)  # nothing appended twice
        assert keys_in(again) == ["a", "b"]

        # The next commit drops the outbox rows the log holds.
        engine.audit_settled = lambda: again.carried_through
        third = write(engine, "c")
        assert [lsn for lsn, _ in engine.audit_outbox(0)] == [third.mutation.lsn]
        await again.close()
    finally:
        engine.close()


async def test_carried_entries_reach_the_log_from_another_thread(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, REGION)
    log = open_log(tmp_path, engine)
    try:
        committed = write(engine, "a")
        await asyncio.to_thread(log.carry, [(committed.mutation.lsn, entry("a"))], [entry("refused")])
        # One queue, in order: once an entry recorded after them is durable, so are they.
        await log.record(principal="node:test", action="marker")
        assert keys_in(log) == ["a", "refused", ""]
        assert log.carried_through == committed.mutation.lsn
    finally:
        await log.close()
        engine.close()


async def test_a_carried_entry_that_is_not_an_unnumbered_entry_stops_the_start(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, REGION)
    try:
        log = new_audit_log(tmp_path)
        with pytest.raises(DataCorruption, match="unnumbered"):
            log.start(lambda after: [(1, entry("a").encode(seq=5))])
    finally:
        engine.close()


@pytest.mark.parametrize("told_of_the_rebuild", [True, False])
async def test_a_rebuilt_store_numbering_again_keeps_its_entries_recoverable(
    tmp_path: Path, told_of_the_rebuild: bool
) -> None:
    """A store rebuilt from a backup numbers its writes again from its own last position, below
    the one the audit log holds. Told the store's position at start, the log moves back to it,
    and an entry carried after that is recovered; not told (the negative control), the entry
    would be taken for one the log already holds."""
    first = SQLiteEngine(tmp_path / "store.sqlite3", NODE, REGION)
    try:
        for key in ("a", "b", "c"):
            write(first, key)
        log = open_log(tmp_path, first)
        assert log.carried_through == 3
        await log.close()
    finally:
        first.close()
    rebuilt = SQLiteEngine(tmp_path / "rebuilt.sqlite3", NODE, REGION)
    try:

        def start(last_lsn: int | None) -> AuditLog:
            log = new_audit_log(tmp_path)
            log.start(rebuilt.audit_outbox, last_lsn)
            return log

        log = start(rebuilt.last_lsn() if told_of_the_rebuild else None)
        await log.close()
        write(rebuilt, "x")  # carried in the store; the node dies before the log appends it
        log = start(rebuilt.last_lsn())
        try:
            assert ("x" in keys_in(log)) is told_of_the_rebuild
        finally:
            await log.close()
    finally:
        rebuilt.close()
