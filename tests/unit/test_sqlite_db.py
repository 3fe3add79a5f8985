"""How every store opens its SQLite file: settings, WAL, schema versions."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from domicile import sqlite_db
from domicile.errors import FailedPrecondition
from domicile.sqlite_db import Pragmas, Schema, connect, migrate, open_database


def create_v3(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (a INTEGER, b INTEGER, c INTEGER)")


def add_b(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE t ADD COLUMN b INTEGER")


def add_c(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE t ADD COLUMN c INTEGER")


def refuse(version: int) -> FailedPrecondition:
    return FailedPrecondition(f"test store has schema version {version}; this code reads version 3")


SCHEMA = Schema(version=3, create=create_v3, upgrades={1: add_b, 2: add_c}, unsupported=refuse)


def columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(t)")]


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def write_version(path: Path, version: int, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()


def test_a_fresh_file_gets_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite3"
    conn = open_database(path, Pragmas(busy_timeout_ms=1234), SCHEMA, label=path.name)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        assert not conn.in_transaction
    finally:
        conn.close()
    assert columns(path) == ["a", "b", "c"]
    assert user_version(path) == 3


def test_an_older_file_is_upgraded_step_by_step_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    write_version(path, 1, "CREATE TABLE t (a INTEGER)", "INSERT INTO t (a) VALUES (7)")
    conn = connect(path, Pragmas())
    try:
        assert migrate(conn, SCHEMA) == 1
        assert migrate(conn, SCHEMA) == 3  # the current version changes nothing
    finally:
        conn.close()
    assert columns(path) == ["a", "b", "c"]
    assert user_version(path) == 3
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT a, b, c FROM t").fetchall() == [(7, None, None)]


def test_a_failing_upgrade_leaves_the_file_at_its_old_version(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    write_version(path, 1, "CREATE TABLE t (a INTEGER)")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE t ADD COLUMN c INTEGER")
        raise RuntimeError("upgrade failed half-way")

    schema = Schema(version=3, create=create_v3, upgrades={1: add_b, 2: broken}, unsupported=refuse)
    with pytest.raises(RuntimeError, match="half-way"):
        open_database(path, Pragmas(), schema, label=path.name)
    assert columns(path) == ["a"]
    assert user_version(path) == 1


@pytest.mark.parametrize("version", [4, 99, -1])
def test_a_newer_or_unknown_version_is_refused_with_the_stores_error(tmp_path: Path, version: int) -> None:
    path = tmp_path / "newer.sqlite3"
    write_version(path, version, "CREATE TABLE t (z TEXT)")
    with pytest.raises(FailedPrecondition, match=f"schema version {version}; this code reads version 3"):
        open_database(path, Pragmas(), SCHEMA, label=path.name)
    assert columns(path) == ["z"]
    assert user_version(path) == version


def test_a_version_without_an_upgrade_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gap.sqlite3"
    write_version(path, 1, "CREATE TABLE t (a INTEGER)")
    schema = Schema(version=3, create=create_v3, upgrades={2: add_c}, unsupported=refuse)
    with pytest.raises(FailedPrecondition, match="schema version 1"):
        open_database(path, Pragmas(), schema, label=path.name)
    assert user_version(path) == 1


def test_connections_carry_their_settings(tmp_path: Path) -> None:
    path = tmp_path / "settings.sqlite3"
    open_database(path, Pragmas(), SCHEMA, label=path.name).close()
    reader = connect(path, Pragmas(synchronous="OFF", secure_delete=True), query_only=True)
    try:
        assert reader.execute("PRAGMA synchronous").fetchone()[0] == 0
        assert reader.execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert (
            reader.execute("PRAGMA journal_size_limit").fetchone()[0] == sqlite_db.JOURNAL_SIZE_LIMIT_DEFAULT
        )
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("INSERT INTO t (a) VALUES (1)")
    finally:
        reader.close()


def _wal_after_a_big_transaction(path: Path, pragmas: Pragmas) -> int:
    """The WAL's size once a 4 MiB transaction was checkpointed and a small one followed."""
    conn = connect(path, pragmas)
    try:
        sqlite_db.use_wal(conn, path.name)
        conn.execute("CREATE TABLE IF NOT EXISTS big (v BLOB)")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO big VALUES (randomblob(4096))", [()] * 1024)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        # The WAL was copied whole: this transaction writes it again from its start.
        conn.execute("INSERT INTO big VALUES (x'00')")
        return Path(f"{path}-wal").stat().st_size
    finally:
        conn.close()


def test_a_wal_is_cut_back_to_its_limit_once_a_big_transaction_was_checkpointed(tmp_path: Path) -> None:
    assert Pragmas().journal_size_limit == sqlite_db.JOURNAL_SIZE_LIMIT_DEFAULT
    limit = 256 << 10
    assert (
        _wal_after_a_big_transaction(tmp_path / "limited.sqlite3", Pragmas(journal_size_limit=limit)) <= limit
    )
    # The negative control: without a limit the file keeps the big transaction's 4 MiB.
    assert (
        _wal_after_a_big_transaction(tmp_path / "unlimited.sqlite3", Pragmas(journal_size_limit=-1)) > 4 << 20
    )


def test_a_file_that_cannot_use_wal_is_refused_unless_allowed() -> None:
    # An in-memory database stands for a file system without the shared memory WAL needs.
    with pytest.raises(FailedPrecondition, match="cannot put the store in WAL mode"):
        open_database(":memory:", Pragmas(), SCHEMA, label="the store")
    conn = open_database(":memory:", Pragmas(), SCHEMA, label="the store", require_wal=False)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    finally:
        conn.close()


def _held_by_a_writer(path: Path, seconds: float) -> threading.Thread:
    """Another connection writes to `path`, still in rollback mode, for `seconds`: what a second
    process sees while the first creates the schema of a store they share."""
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE IF NOT EXISTS early (x INTEGER)")

    def finish() -> None:
        time.sleep(seconds)
        writer.execute("COMMIT")
        writer.close()

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_regression_opening_waits_for_another_process_creating_the_same_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two daemons of one region opened their shared key store at once; SQLite refuses the switch
    # to WAL at once (no busy timeout) while the other holds its write lock, and one daemon
    # failed to start with "database is locked".
    path = tmp_path / "shared.sqlite3"
    writer = _held_by_a_writer(path, 0.3)
    conn = open_database(path, Pragmas(), SCHEMA, label=path.name)
    writer.join()
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    finally:
        conn.close()
    # Negative control: without the wait, the same open fails.
    monkeypatch.setattr(sqlite_db, "WAL_SWITCH_WAIT_S", 0.0)
    again = tmp_path / "again.sqlite3"
    writer = _held_by_a_writer(again, 0.3)
    try:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            open_database(again, Pragmas(), SCHEMA, label=again.name)
    finally:
        writer.join()
