"""A replicated apply's audit entries committed with the apply (the store's audit_received table)
and appended to the audit log after it: a log started after a crash between the two commits
appends what it lacks, once; the table drops what the log holds and never numbers an entry
again, even once it is empty."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from domicile.audit import AuditEntry, verify_log
from domicile.causality import CausalContext, Dot, Mutation, Version, sha256
from domicile.errors import FailedPrecondition
from domicile.hlc import HybridClock
from node.compliance.audit_log import AuditLog
from node.engine.base import ApplyOutcome
from node.engine.sqlite import SCHEMA_VERSION, SQLiteEngine
from tests.support.audit_logs import NODE, REGION, new_audit_log

SOURCE = "eu-central-1-a"


def entry(key: str) -> AuditEntry:
    return AuditEntry(
        0, 1, 1, REGION, NODE, f"node:{SOURCE}", "replicate_receive", "orders", key, decision="allow"
    )


def mutation(key: str, lsn: int) -> Mutation:
    version = Version(
        dot=Dot(SOURCE, lsn),
        value=b"v",
        hlc=HybridClock().now(),
        checksum=sha256(b"v"),
        origin_region="eu-central-1",
    )
    return Mutation("orders", key, CausalContext.empty(), version, lsn=lsn, origin_node_id=SOURCE)


def apply(engine: SQLiteEngine, lsn: int, *keys: str) -> ApplyOutcome:
    return engine.apply_remote(SOURCE, [mutation(k, lsn) for k in keys], lsn, [entry(k) for k in keys])


def open_log(tmp_path: Path, engine: SQLiteEngine | None, told_last: bool = True) -> AuditLog:
    log = new_audit_log(tmp_path)
    if engine is None:
        log.start()
    else:
        log.start(
            engine.audit_outbox,
            engine.last_lsn(),
            received=engine.audit_received,
            store_last_received=engine.last_audit_received() if told_last else None,
        )
    return log


def keys_in(log: AuditLog) -> list[str]:
    return [AuditEntry.decode(e.body).key for e in log.iter_all()]


async def test_a_start_appends_the_entries_only_the_store_holds_once(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, REGION)
    try:
        # The store committed two applies with their entries; the audit log never heard of them
        # (the node died between the two commits).
        first = apply(engine, 1, "a", "b")
        second = apply(engine, 2, "c")
        assert [n for n, _ in first.received + second.received] == [1, 2, 3]
        assert [e.key for _, e in first.received] == ["a", "b"]
        without = open_log(tmp_path, None)
        assert keys_in(without) == []  # negative control: no recovery, no entries
        await without.close()

        log = open_log(tmp_path, engine)
        assert keys_in(log) == ["a", "b", "c"]
        assert log.received_through == 3
        assert verify_log(log.iter_all(), None).ok
        await log.close()
        again = open_log(tmp_path, engine)  # nothing appended twice
        assert keys_in(again) == ["a", "b", "c"]

        # The next apply drops the rows the log holds; the numbers go on, never reused.
        engine.audit_received_settled = lambda: again.received_through
        third = apply(engine, 3, "d")
        assert [n for n, _ in third.received] == [4]
        assert [n for n, _ in engine.audit_received(0)] == [4]
        await asyncio.to_thread(again.carry_received, third.received)
        await again.flush()
        assert keys_in(again) == ["a", "b", "c", "d"]
        assert again.received_through == 4
        engine.audit_received_settled = lambda: again.received_through
        fourth = apply(engine, 4, "e")
        assert [n for n, _ in fourth.received] == [5]
        assert [n for n, _ in engine.audit_received(0)] == [5]
        await again.close()
    finally:
        engine.close()


@pytest.mark.parametrize("told_of_the_rebuild", [True, False])
async def test_a_rebuilt_store_numbering_again_keeps_its_entries_recoverable(
    tmp_path: Path, told_of_the_rebuild: bool
) -> None:
    """A store rebuilt from a backup numbers its received entries again from 1. Told the
    store's last number at start, the log moves back to it and an entry carried after that is
    recovered; not told (the negative control), the entry is taken for one it holds."""
    first = SQLiteEngine(tmp_path / "store.sqlite3", NODE, REGION)
    try:
        apply(first, 1, "a", "b", "c")
        log = open_log(tmp_path, first)
        assert log.received_through == 3
        await log.close()
    finally:
        first.close()
    rebuilt = SQLiteEngine(tmp_path / "rebuilt.sqlite3", NODE, REGION)
    try:
        log = open_log(tmp_path, rebuilt, told_last=told_of_the_rebuild)
        await log.close()
        apply(rebuilt, 1, "x")  # carried in the store; the node dies before the log appends it
        log = open_log(tmp_path, rebuilt)
        try:
            assert ("x" in keys_in(log)) is told_of_the_rebuild
        finally:
            await log.close()
    finally:
        rebuilt.close()


def test_an_apply_without_entries_carries_nothing(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, REGION)
    try:
        outcome = engine.apply_remote(SOURCE, [mutation("a", 1)], 1)
        assert outcome.received == ()
        assert engine.audit_received(0) == []
        assert engine.last_audit_received() == 0
    finally:
        engine.close()


def test_an_engine_that_does_not_carry_entries_refuses_them_and_applies_nothing(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, REGION)
    try:
        engine.sqlite.carries_audit = False
        with pytest.raises(FailedPrecondition, match="does not carry audit entries"):
            apply(engine, 1, "a")
        assert engine.get("orders", "a") is None
        assert engine.inbound_position(SOURCE) == 0
    finally:
        engine.close()


def test_a_schema_5_store_gets_the_received_table(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    SQLiteEngine(path, NODE, REGION).close()
    with sqlite3.connect(path) as conn:  # what a store of version 5 looks like
        conn.execute("DROP TABLE audit_received")
        conn.execute("PRAGMA user_version = 5")
    again = SQLiteEngine(path, NODE, REGION)
    try:
        assert [n for n, _ in apply(again, 1, "a").received] == [1]
    finally:
        again.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
