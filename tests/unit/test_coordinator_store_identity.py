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
