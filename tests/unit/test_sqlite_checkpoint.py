"""WAL checkpoints beside the commits (domicile.sqlite_checkpoint), on real SQLite files."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domicile import sqlite_db
from domicile.errors import InvalidArgument
from domicile.sqlite_checkpoint import DONE, FAILED, WalCheckpointer

PRAGMAS = sqlite_db.Pragmas(synchronous="FULL")
COMMITS = 300
# Eight rows of 1 KiB at scattered keys: each commit writes about eight pages to the WAL, so
# that 300 commits would take it past SQLite's own checkpoint at 1,000 pages.
ROWS_PER_COMMIT = 8
ROW_BYTES = 1024
EVERY_ROWS = 4 * ROWS_PER_COMMIT
# A WAL the checkpointer keeps restarting holds a few commits; one left to SQLite's own
# checkpoint grows to 1,000 pages (4 MiB) first.
SMALL_WAL_BYTES = 1 << 20


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite_db.connect(tmp_path / "t.sqlite", PRAGMAS)
    sqlite_db.use_wal(conn, "t.sqlite")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(k, os.urandom(ROW_BYTES)) for k in range(4000)])
    # The WAL file keeps its size when SQLite writes it again from its start: emptied here, its
    # size is what the commits below took it to.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    yield conn
    conn.close()


def _path(conn: sqlite3.Connection) -> Path:
    (_, _, file) = conn.execute("PRAGMA database_list").fetchone()
    return Path(file)


def _commit(conn: sqlite3.Connection, i: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT OR REPLACE INTO t VALUES (?, ?)",
        [((i * 7919 + j * 499) % 4000, os.urandom(ROW_BYTES)) for j in range(ROWS_PER_COMMIT)],
    )
    conn.execute("COMMIT")


def _wait_for(checkpointer: WalCheckpointer, runs: int) -> None:
    deadline = time.monotonic() + 10
    while checkpointer.checkpoints + checkpointer.failures < runs:
        assert time.monotonic() < deadline, f"{checkpointer.name} ran {checkpointer.checkpoints} checkpoints"
        time.sleep(0.001)


def _write_all(writer: sqlite3.Connection, checkpointer: WalCheckpointer | None) -> int:
    """The commits, each one followed by the checkpoint it made due (when it made one), as a
    writer that pauses between commits would see them; returns the WAL's size in bytes."""
    for i in range(COMMITS):
        _commit(writer, i)
        if checkpointer is not None:
            due = checkpointer.checkpoints + 1
            if checkpointer.committed(writer.total_changes):
                _wait_for(checkpointer, due)
    return os.path.getsize(f"{_path(writer)}-wal")


def _two_checkpoints(writer: sqlite3.Connection, checkpointer: WalCheckpointer) -> None:
    """Two commits, each making a checkpoint due (every_rows=1) and waiting for it to run."""
    for i in range(2):
        _commit(writer, i)
        checkpointer.committed(writer.total_changes)
        _wait_for(checkpointer, i + 1)


def test_the_checkpointer_keeps_the_wal_small_and_sqlite_alone_does_not(writer: sqlite3.Connection) -> None:
    path = _path(writer)
    checkpointer = WalCheckpointer(
        sqlite_db.connect(path, PRAGMAS), name="checkpoint t", every_rows=EVERY_ROWS
    )
    try:
        wal_bytes = _write_all(writer, checkpointer)
    finally:
        checkpointer.close()
    # Every every_rows changed rows woke it once, and each of its checkpoints copied the WAL.
    assert checkpointer.checkpoints == COMMITS * ROWS_PER_COMMIT // EVERY_ROWS
    assert checkpointer.failures == 0
    assert wal_bytes < SMALL_WAL_BYTES

    # The negative control: the same commits with SQLite's own checkpoint alone.
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert _write_all(writer, None) > SMALL_WAL_BYTES


def test_closing_stops_the_thread_and_the_writer_then_removes_the_wal(writer: sqlite3.Connection) -> None:
    path = _path(writer)
    checkpointer = WalCheckpointer(sqlite_db.connect(path, PRAGMAS), name="checkpoint t", every_rows=1)
    _commit(writer, 0)
    checkpointer.committed(writer.total_changes)
    # Its gauge reads the WAL beside the file it checkpoints.
    assert checkpointer.wal_bytes() == Path(f"{path}-wal").stat().st_size > 0
    checkpointer.close()
    assert "checkpoint t" not in {thread.name for thread in threading.enumerate()}
    writer.close()
    # The writer was the file's last connection: SQLite checkpointed and removed the WAL.
    assert not Path(f"{path}-wal").exists()
    assert checkpointer.wal_bytes() == 0


class _FailingOnce(sqlite3.Connection):
    """A real connection whose first checkpoint fails as a full disk would fail it."""

    failed = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("PRAGMA wal_checkpoint") and not _FailingOnce.failed:
            _FailingOnce.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


def test_a_failed_checkpoint_is_counted_and_logged_and_the_next_one_runs(
    writer: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    conn = sqlite3.connect(_path(writer), isolation_level=None, check_same_thread=False, factory=_FailingOnce)
    checkpointer = WalCheckpointer(conn, name="checkpoint t", every_rows=1)
    heard: list[tuple[str, float]] = []
    checkpointer.on_checkpoint = lambda outcome, seconds: heard.append((outcome, seconds))
    try:
        with caplog.at_level(logging.WARNING, logger="domicile.sqlite_checkpoint"):
            _two_checkpoints(writer, checkpointer)
    finally:
        checkpointer.close()
    assert (checkpointer.failures, checkpointer.checkpoints) == (1, 1)
    assert "checkpoint t: a checkpoint failed: database or disk is full" in caplog.text
    # The hook (a node's metrics) heard both, in order, with how long each took.
    assert [outcome for outcome, _ in heard] == [FAILED, DONE]
    assert all(seconds >= 0 for _, seconds in heard)


def test_a_failing_hook_is_logged_and_the_checkpoints_go_on(
    writer: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    checkpointer = WalCheckpointer(
        sqlite_db.connect(_path(writer), PRAGMAS), name="checkpoint t", every_rows=1
    )

    def broken(outcome: str, seconds: float) -> None:
        raise RuntimeError("a broken metrics hook")

    checkpointer.on_checkpoint = broken
    try:
        with caplog.at_level(logging.ERROR, logger="domicile.sqlite_checkpoint"):
            _two_checkpoints(writer, checkpointer)
    finally:
        checkpointer.close()
    assert (checkpointer.checkpoints, checkpointer.failures) == (2, 0)
    assert "checkpoint t: the checkpoint hook failed" in caplog.text


def test_a_due_checkpoint_waits_for_a_pause_in_the_commits(writer: sqlite3.Connection) -> None:
    """A checkpoint that overlaps commits slows them: while they keep coming closer together
    than quiet_s, it waits; at the first pause it runs."""
    conn = sqlite_db.connect(_path(writer), PRAGMAS)
    checkpointer = WalCheckpointer(conn, name="checkpoint t", every_rows=1, quiet_s=1.0)
    try:
        _commit(writer, 0)
        assert checkpointer.committed(writer.total_changes)
        until = time.monotonic() + 0.3
        i = 1
        while time.monotonic() < until:
            _commit(writer, i)
            checkpointer.committed(writer.total_changes)
            time.sleep(0.01)
            i += 1
        assert checkpointer.checkpoints == 0
        _wait_for(checkpointer, 1)
    finally:
        checkpointer.close()
    assert checkpointer.failures == 0


def test_a_change_count_that_wrapped_still_makes_checkpoints_due(writer: sqlite3.Connection) -> None:
    """SQLite counts a connection's changes in a C int: past 2**31 - 1 the count Python reads
    is negative, and rows since the last checkpoint still count."""
    conn = sqlite_db.connect(_path(writer), PRAGMAS)
    checkpointer = WalCheckpointer(conn, name="checkpoint t", every_rows=128)
    try:
        assert checkpointer.committed(2**31 - 100)
        assert not checkpointer.committed(2**31 - 1)  # 99 rows since
        assert checkpointer.committed(-(2**31) + 100)  # 200 rows since, across the wrap
        assert not checkpointer.committed(-(2**31) + 200)
    finally:
        checkpointer.close()


@pytest.mark.parametrize(
    ("every_rows", "quiet_s", "message"),
    [
        (0, 0.001, "every_rows is 0; it must be at least 1"),
        (1, -0.1, "quiet_s is -0.1; it must be 0 to 1 second"),
        (1, 2.0, "quiet_s is 2.0; it must be 0 to 1 second"),
    ],
)
def test_bad_settings_are_refused(
    writer: sqlite3.Connection, every_rows: int, quiet_s: float, message: str
) -> None:
    conn = sqlite_db.connect(_path(writer), PRAGMAS)
    try:
        with pytest.raises(InvalidArgument, match=message):
            WalCheckpointer(conn, name="checkpoint t", every_rows=every_rows, quiet_s=quiet_s)
    finally:
        conn.close()
