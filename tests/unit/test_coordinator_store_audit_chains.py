"""The coordinator's store keeps each audit head with the incarnation of the node it came from,
and the head of a chain a later incarnation closed; a version 3 file gains the column and the
table on open, its heads read back as incarnation 0."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from coordinator.store import SCHEMA_VERSION, CoordinatorStore


def test_a_version_3_store_keeps_its_heads_as_incarnation_0(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path)
    store.save_audit_head("eu-west-1", b"head-6", 10)
    store.close()
    path = tmp_path / CoordinatorStore.DB_NAME
    with sqlite3.connect(path) as db:  # what version 3 wrote: no incarnations, no closed chains
        db.execute("ALTER TABLE audit_heads DROP COLUMN incarnation")
        db.execute("DROP TABLE audit_heads_closed")
        db.execute("PRAGMA user_version = 3")
    store = CoordinatorStore(tmp_path)
    try:
        assert store.load_audit_heads() == {"eu-west-1": (b"head-6", 10, 0)}
        assert store.closed_audit_heads() == []
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_new_incarnations_head_keeps_the_closed_chains_head(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path)
    try:
        store.save_audit_head("eu-west-1", b"head-6", 10)
        store.save_audit_head("eu-west-1", b"head-9", 20)  # the same chain grows: nothing closed
        assert store.closed_audit_heads() == []
        store.save_audit_head("eu-west-1", b"head-2", 30, incarnation=1700000000, closes=True)
        assert store.load_audit_heads() == {"eu-west-1": (b"head-2", 30, 1700000000)}
        assert store.closed_audit_heads() == [("eu-west-1", 0, b"head-9", 20, 30)]
    finally:
        store.close()
