"""Opening a store's SQLite file: connection settings, WAL, and the schema version.

Every store keeps its schema version in `PRAGMA user_version` (0 means a file nothing was
written to yet). A fresh file gets the whole current schema; an older one is upgraded one
version at a time; all of it, and the new version stamp, in one transaction, so a crash leaves
the file at its old version or at the new one, never half-way. A version with no way to the
current one (a newer program wrote it) is refused with the store's own error, and the file is
left as it was.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from domicile.errors import FailedPrecondition

Step = Callable[[sqlite3.Connection], None]

# How long a switch to WAL waits for another connection's write transaction on the same file.
WAL_SWITCH_WAIT_S = 5.0
_WAL_SWITCH_POLL_MAX_S = 0.05


# 64 MiB: far above what checkpoints between commits let a WAL grow to (a few hundred KiB).
JOURNAL_SIZE_LIMIT_DEFAULT = 64 << 20


@dataclass(frozen=True)
class Pragmas:
    """Per-connection settings, applied to every connection a store opens."""

    synchronous: str = "FULL"
    # None keeps sqlite3.connect's own busy timeout (5 s).
    busy_timeout_ms: int | None = None
    # Overwrites deleted content with zeros; refused connections raise FailedPrecondition.
    secure_delete: bool = False
    # What a WAL file is cut back to when the writer starts it again after a checkpoint copied
    # all of it (-1: never cut). Without a limit the file keeps the size of the largest
    # transaction it ever held (a bootstrap's, a big batch's) until the last connection closes.
    journal_size_limit: int = JOURNAL_SIZE_LIMIT_DEFAULT


@dataclass(frozen=True)
class Schema:
    """A store's schema: its current version, how to create it, how to reach it from older ones."""

    version: int
    create: Step
    # Builds the error that refuses a file of this version (newer, or with no upgrade path).
    unsupported: Callable[[int], Exception]
    # upgrades[n] moves a file from version n to n + 1.
    upgrades: Mapping[int, Step] = field(default_factory=dict)


def connect(
    path: str | os.PathLike[str],
    pragmas: Pragmas,
    *,
    label: str = "",
    query_only: bool = False,
    check_same_thread: bool = False,
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are begun explicitly) with `pragmas`
    applied. `label` names the file in error messages."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    try:
        if pragmas.busy_timeout_ms is not None:
            conn.execute(f"PRAGMA busy_timeout = {int(pragmas.busy_timeout_ms)}")
        conn.execute(f"PRAGMA synchronous = {pragmas.synchronous}")
        conn.execute(f"PRAGMA journal_size_limit = {int(pragmas.journal_size_limit)}")
        if pragmas.secure_delete:
            (secure,) = conn.execute("PRAGMA secure_delete = ON").fetchone()
            if int(secure) != 1:
                raise FailedPrecondition(
                    f"SQLite refused secure_delete for {label or os.fspath(path)} (got {secure}); "
                    "destroyed keys would stay readable in the file"
                )
        if query_only:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def use_wal(conn: sqlite3.Connection, label: str) -> None:
    """Puts the file in WAL mode (readers do not wait for the writer); refuses a file that
    cannot be (WAL needs shared memory, which network file systems may not offer)."""
    journal = switch_to_wal(conn)
    if journal.lower() != "wal":
        raise FailedPrecondition(f"cannot put {label} in WAL mode (got {journal}); use a local file")


def switch_to_wal(conn: sqlite3.Connection) -> str:
    """`PRAGMA journal_mode = WAL`, retried while another connection writes to the file; returns
    the journal mode the file is in afterwards.

    The switch needs the file to itself. While another connection holds a write lock on a file
    still in rollback mode (two processes opening one new store at once: the first one is
    creating the schema), SQLite refuses the switch at once with SQLITE_BUSY rather than wait
    on the busy timeout, because waiting could deadlock. The writer finishes soon, so waiting
    here is safe."""
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    pause = 0.001
    while True:
        try:
            (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return str(journal)
        except sqlite3.OperationalError as error:
            if not _busy(error) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _WAL_SWITCH_POLL_MAX_S)


def _busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


def migrate(conn: sqlite3.Connection, schema: Schema) -> int:
    """Brings the file to schema.version in one transaction; returns the version it had."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        if found != schema.version:
            for step in _steps(schema, int(found)):
                step(conn)
            conn.execute(f"PRAGMA user_version = {int(schema.version)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(found)


def open_database(
    path: str | os.PathLike[str],
    pragmas: Pragmas,
    schema: Schema,
    *,
    label: str,
    require_wal: bool = True,
    check_same_thread: bool = False,
) -> sqlite3.Connection:
    """The write connection of a store: connected, in WAL mode and at the current schema.
    With require_wal=False, a file that cannot use WAL keeps its journal mode instead of being
    refused."""
    conn = connect(path, pragmas, label=label, check_same_thread=check_same_thread)
    try:
        if require_wal:
            use_wal(conn, label)
        else:
            switch_to_wal(conn)
        migrate(conn, schema)
    except BaseException:
        conn.close()
        raise
    return conn


def _steps(schema: Schema, found: int) -> list[Step]:
    if found == 0:
        return [schema.create]
    if 0 < found < schema.version:
        steps = [schema.upgrades.get(version) for version in range(found, schema.version)]
        if all(step is not None for step in steps):
            return [step for step in steps if step is not None]
    raise schema.unsupported(found)
