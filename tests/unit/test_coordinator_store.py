"""The coordinator's state file across versions: a version 1 file is upgraded in place, a file
from a newer coordinator is refused and left as it was."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.store import SCHEMA_VERSION, CoordinatorStore, SubjectChanges
from domicile.errors import FailedPrecondition
from domicile.subjects import KeptRecord, RegionReceipt, RequestKind, RequestStatus, SubjectRequest

# What a version 1 coordinator wrote: nodes, meta and audit heads, no data-subject tables.
_VERSION_1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE nodes (node_id TEXT PRIMARY KEY, region TEXT NOT NULL, address TEXT NOT NULL, "
    "metrics_address TEXT NOT NULL, health INTEGER NOT NULL, last_heartbeat_unix_ms INTEGER NOT NULL)",
    "CREATE TABLE audit_heads (region TEXT PRIMARY KEY, head BLOB NOT NULL, "
    "accepted_unix_ms INTEGER NOT NULL)",
    "INSERT INTO meta (key, value) VALUES ('revision', '7')",
    "INSERT INTO nodes VALUES ('eu-west-1-a', 'eu-west-1', '127.0.0.1:1', '127.0.0.1:2', 1, 5)",
    "PRAGMA user_version = 1",
)


def _write(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_a_version_1_store_is_upgraded_and_keeps_its_state(tmp_path: Path) -> None:
    _write(tmp_path / CoordinatorStore.DB_NAME, *_VERSION_1)
    store = CoordinatorStore(tmp_path)
    try:
        state = store.load()
        assert state.revision == 7
        assert [n.node_id for n in state.nodes] == ["eu-west-1-a"]
        assert store.open_requests() == ()
        assert store.holds_in_force() == ()
    finally:
        store.close()
    assert _version(tmp_path / CoordinatorStore.DB_NAME) == SCHEMA_VERSION


def test_a_store_from_a_newer_coordinator_is_refused(tmp_path: Path) -> None:
    CoordinatorStore(tmp_path).close()
    _write(tmp_path / CoordinatorStore.DB_NAME, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(FailedPrecondition, match=f"schema version {SCHEMA_VERSION + 1}; .*run a newer"):
        CoordinatorStore(tmp_path)
    assert _version(tmp_path / CoordinatorStore.DB_NAME) == SCHEMA_VERSION + 1
    # The refusal released the data directory's lock.
    _write(tmp_path / CoordinatorStore.DB_NAME, f"PRAGMA user_version = {SCHEMA_VERSION}")
    CoordinatorStore(tmp_path).close()


def test_a_version_4_store_gains_the_release_receipts_and_reads_its_receipts_as_before(
    tmp_path: Path,
) -> None:
    listed = (KeptRecord("customers_eu", "c-1", "legal hold hold-00000000a1"),)
    own = RegionReceipt("eu-west-1", "eu-west-1-a", 1, 2, kept=listed, kept_total=1)
    request = SubjectRequest(
        "req-00000000a1",
        RequestKind.ERASURE,
        "s-1",
        "",
        "asked",
        1,
        2,
        RequestStatus.COMPLETED,
        receipts=(own,),
    )
    store = CoordinatorStore(tmp_path)
    store.save_subjects(SubjectChanges(requests=(request,)))
    store.close()
    path = tmp_path / CoordinatorStore.DB_NAME
    with sqlite3.connect(path) as db:  # what version 4 wrote: no release receipts, nor their fields
        db.execute("DROP TABLE erasure_release_receipts")
        db.execute(
            "UPDATE erasure_receipts SET receipt = json_remove(receipt, '$.kept_total', '$.released_hold_id')"
        )
        db.execute("PRAGMA user_version = 4")
    store = CoordinatorStore(tmp_path)
    try:
        assert store.request(request.request_id) == request
        released = RegionReceipt(
            "eu-west-1", "eu-west-1-a", 3, 4, (("customers_eu", 1),), released_hold_id="hold-00000000a1"
        )
        store.save_subjects(SubjectChanges(requests=(replace(request, release_receipts=(released,)),)))
        stored = store.request(request.request_id)
        assert stored is not None and stored.release_receipts == (released,)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
