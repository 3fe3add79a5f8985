"""The coordinator's store keeps who asked for an erasure and who placed and released a hold,
and a version 2 file gains those columns on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from coordinator.store import SCHEMA_VERSION, CoordinatorStore, HoldRelease, SubjectChanges
from domicile.subjects import HoldScope, LegalHold

DPO = "spiffe://domicile/client/dpo-anna"


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}


def test_a_version_2_store_gains_the_identity_columns_and_keeps_its_holds(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path)
    hold = LegalHold("hold-1", HoldScope.SUBJECT, "s-1", reason="litigation", placed_ms=5)
    store.save_subjects(SubjectChanges(placed=(hold,)))
    store.close()
    path = tmp_path / CoordinatorStore.DB_NAME
    with sqlite3.connect(path) as db:  # what version 2 wrote: no identity columns
        for table, column in (
            ("subject_requests", "requested_by"),
            ("legal_holds", "placed_by"),
            ("legal_holds", "released_by"),
        ):
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 2")
    assert "placed_by" not in _columns(path, "legal_holds")

    store = CoordinatorStore(tmp_path)
    try:
        assert store.holds_in_force() == (hold,)
        placed = LegalHold("hold-2", HoldScope.SUBJECT, "s-2", reason="audit", placed_ms=6, placed_by=DPO)
        store.save_subjects(SubjectChanges(placed=(placed,), released=(HoldRelease("hold-1", 7, "", DPO),)))
        assert store.holds_in_force() == (placed,)
    finally:
        store.close()
    assert {"requested_by"} <= _columns(path, "subject_requests")
    assert {"placed_by", "released_by"} <= _columns(path, "legal_holds")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT released_by FROM legal_holds WHERE hold_id = 'hold-1'").fetchone()[0] == DPO


def test_a_version_1_store_upgrades_through_the_current_creates_to_the_current_version(
    tmp_path: Path,
) -> None:
    """Version 1 -> 2 runs the current CREATE statements (tables with version 3's columns), and
    2 -> 3 then finds the columns there already."""
    path = tmp_path / CoordinatorStore.DB_NAME
    with sqlite3.connect(path) as db:  # what version 1 wrote: no subject tables at all
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE nodes (node_id TEXT PRIMARY KEY, region TEXT NOT NULL, address TEXT NOT NULL, "
            "metrics_address TEXT NOT NULL, health INTEGER NOT NULL, last_heartbeat_unix_ms INTEGER NOT NULL)"
        )
        db.execute(
            "CREATE TABLE audit_heads (region TEXT PRIMARY KEY, head BLOB NOT NULL, "
            "accepted_unix_ms INTEGER NOT NULL)"
        )
        db.execute("PRAGMA user_version = 1")
    store = CoordinatorStore(tmp_path)
    try:
        placed = LegalHold("hold-1", HoldScope.SUBJECT, "s-1", reason="audit", placed_ms=6, placed_by=DPO)
        store.save_subjects(SubjectChanges(placed=(placed,)))
        assert store.holds_in_force() == (placed,)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
