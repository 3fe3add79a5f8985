"""The default storage engine: one SQLite database per node, in WAL mode.

The engine core (node.engine.core) decides what to write; this module stores it. One write
connection (guarded by a lock) runs every write transaction; each reading thread gets its own
connection, so reads never wait for a commit (WAL readers see the last committed snapshot). Key
states and change-log entries are stored in their protobuf form (domicile.wire.records).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TypeVar

from domicile import sqlite_db
from domicile.errors import FailedPrecondition, InvalidArgument, Unavailable
from domicile.sqlite_checkpoint import WalCheckpointer
from node.engine.backend import LogRow, SnapshotRow, StateRow, Totals
from node.engine.base import StateTooLarge, StoreCounts
from node.engine.core import (
    DOT_COUNTER_MAX,
    META_VALUE_BYTES_MAX,
    EngineCore,
    check_identity,
    decode_state,
    prefix_upper_bound,
)

__all__ = [
    "DOT_COUNTER_MAX",
    "META_VALUE_BYTES_MAX",
    "SYNCHRONOUS_MODES",
    "SQLiteBackend",
    "SQLiteEngine",
    "prefix_upper_bound",
]

T = TypeVar("T")

SCHEMA_VERSION = 6
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL")
# Page size of a new store. A key state is stored in kv, a WITHOUT ROWID table, whose cells
# hold at most about a quarter of a page: on 4 KiB pages a record of a 1 KiB value spilled the
# rest of its ~1.1 KB state into an overflow page of its own, mostly empty (a store 6x its
# raw size). 8 KiB pages keep states up to about 2 KB in their leaf. SQLite sets it only on a
# file still empty (before WAL mode): existing stores keep theirs.
PAGE_BYTES = 8192
BUSY_TIMEOUT_MS = 10_000
# The meta rows of the store's growing numbers (WriteTx.store_max) are named this and the name.
_MAX = "max:"


def _number(row: tuple[bytes] | None) -> int:
    return int(bytes(row[0]).decode()) if row else 0


# Where schema 2 kept the erasure block list: one JSON blob in meta (moved to its own table in 3).
_BLOCKED_META_V2 = "erased_subjects"

# Which keys hold versions about which data subject (live or tombstoned): erasure and export
# find a subject's records without scanning the store. Rows are never removed: a tombstone
# keeps its subject.
_SUBJECT_KEYS = (
    "CREATE TABLE subject_keys (subject TEXT NOT NULL, namespace TEXT NOT NULL, key TEXT NOT NULL, "
    "PRIMARY KEY (subject, namespace, key)) WITHOUT ROWID"
)
# Erased data subjects (a keyed hash of the id) and the request that erased each: one row per
# subject, so blocking one more subject writes one row, not the whole list.
_ERASED_SUBJECTS = (
    "CREATE TABLE erased_subjects (digest TEXT PRIMARY KEY, request_id TEXT NOT NULL) WITHOUT ROWID"
)

# The audit entries of local writes, committed with the writes themselves (one fsync per write,
# node/compliance/audit_log.py carry()): a row stays until the audit log holds its entry.
_AUDIT_OUTBOX = "CREATE TABLE audit_outbox (lsn INTEGER PRIMARY KEY, body BLOB NOT NULL)"
# The audit entries of replicated applies (replicate_receive), committed with the apply. An apply
# has no change-log position, so its entries are numbered apart: AUTOINCREMENT never reuses a
# number, even after every row was dropped, so a number the audit log holds is never given again.
_AUDIT_RECEIVED = "CREATE TABLE audit_received (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)"

# Tombstone garbage collection walks the keys with no live version without reading the others.
_KV_DEAD = "CREATE INDEX kv_dead ON kv (namespace, key) WHERE live = 0"

_SCHEMA = (
    """CREATE TABLE kv (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        state BLOB NOT NULL,
        live INTEGER NOT NULL,
        PRIMARY KEY (namespace, key)
    ) WITHOUT ROWID""",
    # Scans skip tombstoned keys without reading them.
    "CREATE INDEX kv_live ON kv (namespace, key) WHERE live = 1",
    _KV_DEAD,
    """CREATE TABLE changelog (
        lsn INTEGER PRIMARY KEY,
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        mutation BLOB NOT NULL
    )""",
    "CREATE TABLE inbound_positions (source TEXT PRIMARY KEY, lsn INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE outbound_acks (target TEXT PRIMARY KEY, lsn INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    # Running totals, updated in each write transaction, so that counts() and last_lsn() do not
    # scan, and so that positions are never reused even if the change log is truncated later.
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO counters (name, value) VALUES ('records', 0), ('tombstones', 0), ('last_lsn', 0)",
    # Who owns this file: a node must not reopen another node's change log under its own name.
    "CREATE TABLE engine_info (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    _SUBJECT_KEYS,
    _ERASED_SUBJECTS,
    _AUDIT_OUTBOX,
    _AUDIT_RECEIVED,
)

_SCAN_SQL = {
    (inclusive, bounded): (
        "SELECT key, state FROM kv WHERE namespace = ? AND live = 1 AND key "
        + (">= ?" if inclusive else "> ?")
        + (" AND key < ?" if bounded else "")
        + " ORDER BY key LIMIT ?"
    )
    for inclusive in (False, True)
    for bounded in (False, True)
}

_LOAD_CHUNK_KEYS = 500

# The running totals in one row, where a row per counter took three steps of the statement.
_TOTALS = ("records", "tombstones", "last_lsn")
_READ_TOTALS = (
    "SELECT (SELECT value FROM counters WHERE name = 'records'), "
    "(SELECT value FROM counters WHERE name = 'tombstones'), "
    "(SELECT value FROM counters WHERE name = 'last_lsn')"
)


class _ReaderSlot:
    """Holds a thread's read connection; when the thread ends, the slot is collected and a
    finalizer closes the connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


def _drop_reader(conn: sqlite3.Connection, readers: set[sqlite3.Connection]) -> None:
    # No lock here: a finalizer may run on any thread at any allocation, even one holding it.
    readers.discard(conn)
    conn.close()


class _SQLiteTx:
    """A WriteTx on the write connection, inside BEGIN IMMEDIATE.

    A lone write is a commit of its own, so the statements of a commit are paid per write;
    each step of one also releases the GIL, which a busy event loop then takes, and the writer
    waits to get it back. So a transaction runs no statement that changes nothing."""

    def __init__(self, conn: sqlite3.Connection, outbox_pruned_through: int) -> None:
        self.conn = conn
        # The totals as stored now (read, or written since), so that store_totals writes only
        # the counters that moved.
        self._stored: tuple[int, int, int] | None = None
        # The audit outbox holds no row at or below this position (as of the transaction's
        # start); the transaction's own prune moves it, for the backend to keep once committed.
        self.outbox_pruned_through = outbox_pruned_through

    def totals(self) -> Totals:
        records, tombstones, last_lsn = self.conn.execute(_READ_TOTALS).fetchone()
        self._stored = (records, tombstones, last_lsn)
        return Totals(records=records, tombstones=tombstones, last_lsn=last_lsn)

    def load_states(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        return _load_states(self.conn, namespace, keys)

    def store_states(self, rows: Sequence[StateRow]) -> None:
        self.conn.executemany(
            "INSERT INTO kv (namespace, key, state, live) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET state = excluded.state, live = excluded.live",
            [(r.namespace, r.key, r.state, int(r.live)) for r in rows],
        )
        subjects = [(subject, r.namespace, r.key) for r in rows for subject in r.subjects]
        if subjects:  # most records are about no data subject: no statement for nothing
            self.conn.executemany(
                "INSERT OR IGNORE INTO subject_keys (subject, namespace, key) VALUES (?, ?, ?)", subjects
            )

    def append_log(self, rows: Sequence[LogRow]) -> None:
        self.conn.executemany(
            "INSERT INTO changelog (lsn, namespace, key, mutation) VALUES (?, ?, ?, ?)", rows
        )

    def store_totals(self, totals: Totals) -> None:
        values = (totals.records, totals.tombstones, totals.last_lsn)
        stored = self._stored or (None, None, None)
        moved = [
            (value, name) for name, value, now in zip(_TOTALS, values, stored, strict=True) if value != now
        ]
        if moved:
            self.conn.executemany("UPDATE counters SET value = ? WHERE name = ?", moved)
        self._stored = values

    def raise_inbound(self, source: str, lsn: int) -> int:
        self.conn.execute(
            "INSERT INTO inbound_positions (source, lsn) VALUES (?, ?) "
            "ON CONFLICT (source) DO UPDATE SET lsn = MAX(lsn, excluded.lsn)",
            (source, lsn),
        )
        (position,) = self.conn.execute(
            "SELECT lsn FROM inbound_positions WHERE source = ?", (source,)
        ).fetchone()
        return int(position)

    def raise_outbound(self, target: str, lsn: int) -> None:
        self.conn.execute(
            "INSERT INTO outbound_acks (target, lsn) VALUES (?, ?) "
            "ON CONFLICT (target) DO UPDATE SET lsn = MAX(lsn, excluded.lsn)",
            (target, lsn),
        )

    def put_meta(self, name: str, value: bytes) -> None:
        self.conn.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def store_max(self, name: str) -> int:
        return _number(self.conn.execute("SELECT value FROM meta WHERE name = ?", (_MAX + name,)).fetchone())

    def raise_store_max(self, name: str, value: int) -> None:
        # One writer per SQLite store: the store's numbers are its node's meta.
        if value > self.store_max(name):
            self.put_meta(_MAX + name, str(value).encode())

    def other_writers(self) -> list[str]:
        return []  # one writer per SQLite store

    def block_subject(self, digest: str, request_id: str) -> None:
        self.conn.execute(
            "INSERT INTO erased_subjects (digest, request_id) VALUES (?, ?) "
            "ON CONFLICT (digest) DO UPDATE SET request_id = excluded.request_id",
            (digest, request_id),
        )

    def carry_audit(self, rows: Sequence[tuple[int, bytes]], settled_through: int) -> None:
        # The audit log appends carried entries in groups: most commits find the same settled
        # position as the last prune, with nothing at or below it left to delete (a row carried
        # since then has a later position).
        if settled_through > self.outbox_pruned_through:
            self.conn.execute("DELETE FROM audit_outbox WHERE lsn <= ?", (settled_through,))
            self.outbox_pruned_through = settled_through
        self.conn.executemany("INSERT INTO audit_outbox (lsn, body) VALUES (?, ?)", rows)

    def carry_received(self, bodies: Sequence[bytes], settled_through: int) -> list[int]:
        self.conn.execute("DELETE FROM audit_received WHERE seq <= ?", (settled_through,))
        return [
            int(
                self.conn.execute(
                    "INSERT INTO audit_received (body) VALUES (?) RETURNING seq", (body,)
                ).fetchone()[0]
            )
            for body in bodies
        ]

    def delete_log(self, through_lsn: int) -> None:
        self.conn.execute("DELETE FROM changelog WHERE lsn <= ?", (through_lsn,))

    def delete_states(self, namespace: str, keys: Mapping[str, Sequence[str]]) -> None:
        self.conn.executemany(
            "DELETE FROM kv WHERE namespace = ? AND key = ?", [(namespace, key) for key in keys]
        )
        self.conn.executemany(
            "DELETE FROM subject_keys WHERE subject = ? AND namespace = ? AND key = ?",
            [(subject, namespace, key) for key, subjects in keys.items() for subject in subjects],
        )


class SQLiteBackend:
    """The Backend on one SQLite file. `synchronous` is FULL by default (a commit is on disk
    when write() returns); NORMAL and OFF exist for benchmarks."""

    carries_audit = True

    def __init__(
        self, path: str | os.PathLike[str], node_id: str, region: str, *, synchronous: str = "FULL"
    ) -> None:
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise InvalidArgument(
                f"unknown synchronous mode {synchronous!r}; allowed: {', '.join(SYNCHRONOUS_MODES)}"
            )
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise InvalidArgument(
                f"database path {self.path!r} is not a file path; the SQLite engine needs a file so that "
                "several connections share it"
            )
        self.node_id = node_id
        self.region = region
        self.synchronous = mode
        self._closed = False
        self._write_lock = threading.Lock()
        # The position through which the write connection's committed prunes emptied the audit
        # outbox (_SQLiteTx.carry_audit). 0 at the start: the first commit to find a settled
        # position prunes, whatever rows an earlier run left.
        self._outbox_pruned_through = 0
        self._local = threading.local()
        self.readers: set[sqlite3.Connection] = set()
        self._readers_lock = threading.Lock()
        self.writer = self._connect()
        try:
            self._prepare()
            # Checkpoints off the commit path (domicile.sqlite_checkpoint).
            self.checkpointer = WalCheckpointer.beside(self.path, self._pragmas())
        except BaseException:
            self.writer.close()
            raise

    # -- connections -------------------------------------------------------------------------

    def _pragmas(self) -> sqlite_db.Pragmas:
        return sqlite_db.Pragmas(synchronous=self.synchronous, busy_timeout_ms=BUSY_TIMEOUT_MS)

    def _connect(self) -> sqlite3.Connection:
        return sqlite_db.connect(self.path, self._pragmas(), label=self.path)

    def _prepare(self) -> None:
        conn = self.writer
        conn.execute(f"PRAGMA page_size = {PAGE_BYTES}")
        sqlite_db.use_wal(conn, self.path)
        with self._write_lock:
            sqlite_db.migrate(conn, self._schema())
            info = dict(conn.execute("SELECT name, value FROM engine_info").fetchall())
        for name, mine in (("node_id", self.node_id), ("region", self.region)):
            if info.get(name) != mine:
                raise FailedPrecondition(
                    f"{self.path} belongs to {name} {info.get(name)!r}, not {mine!r}; "
                    "a database is reopened only by the node that created it"
                )

    def _schema(self) -> sqlite_db.Schema:
        return sqlite_db.Schema(
            version=SCHEMA_VERSION,
            create=self._create_schema,
            upgrades={
                1: _index_subjects,
                2: _move_erased_subjects,
                3: _add_audit_outbox,
                4: _index_dead,
                5: _add_audit_received,
            },
            unsupported=lambda version: FailedPrecondition(
                f"{self.path} has schema version {version}; this engine reads version {SCHEMA_VERSION}"
            ),
        )

    def _create_schema(self, tx: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            tx.execute(statement)
        tx.executemany(
            "INSERT INTO engine_info (name, value) VALUES (?, ?)",
            [("node_id", self.node_id), ("region", self.region)],
        )

    def reader(self) -> sqlite3.Connection:
        slot: _ReaderSlot | None = getattr(self._local, "slot", None)
        if slot is not None:
            if self._closed:
                raise Unavailable("storage engine is closed")
            return slot.conn
        conn = self._connect()
        conn.execute("PRAGMA query_only = ON")
        with self._readers_lock:
            if self._closed:
                conn.close()
                raise Unavailable("storage engine is closed")
            self.readers.add(conn)
        slot = _ReaderSlot(conn)
        weakref.finalize(slot, _drop_reader, conn, self.readers)
        self._local.slot = slot
        return conn

    def state_too_large(self, row: StateRow) -> StateTooLarge | None:
        # SQLite stores a blob up to 1 GB (its default length limit): store_states refuses no
        # state for its size.
        return None

    def write(self, fn: Callable[[_SQLiteTx], T]) -> T:
        with self._write_lock:
            if self._closed:
                raise Unavailable("storage engine is closed")
            conn = self.writer
            conn.execute("BEGIN IMMEDIATE")
            tx = _SQLiteTx(conn, self._outbox_pruned_through)
            try:
                result = fn(tx)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.checkpointer.committed(conn.total_changes)
            # Only a committed prune empties the outbox: a rolled back one leaves the rows.
            self._outbox_pruned_through = tx.outbox_pruned_through
            return result

    def close(self) -> None:
        with self._write_lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            self.checkpointer.close()
            readers = self.readers.copy()
            self.readers.clear()
            for conn in readers:
                conn.close()
            self.writer.close()

    # -- reads -------------------------------------------------------------------------------

    def ping(self) -> None:
        self.reader().execute("SELECT 1").fetchone()

    def load_states(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        return _load_states(self.reader(), namespace, keys)

    def scan(
        self, namespace: str, lower: str, inclusive: bool, upper: str | None, limit: int
    ) -> list[tuple[str, bytes]]:
        params: tuple[object, ...] = (namespace, lower)
        if upper is not None:
            params += (upper,)
        sql = _SCAN_SQL[(inclusive, upper is not None)]
        rows = self.reader().execute(sql, (*params, limit)).fetchall()
        return [(str(key), bytes(blob)) for key, blob in rows]

    def read_log(self, after_lsn: int, limit: int) -> list[LogRow]:
        rows = self.reader().execute(
            "SELECT lsn, namespace, key, mutation FROM changelog WHERE lsn > ? ORDER BY lsn LIMIT ?",
            (after_lsn, limit),
        )
        return [LogRow(int(lsn), str(namespace), str(key), bytes(blob)) for lsn, namespace, key, blob in rows]

    def last_lsn(self) -> int:
        (value,) = self.reader().execute("SELECT value FROM counters WHERE name = 'last_lsn'").fetchone()
        return int(value)

    def other_writer_ids(self) -> list[str]:
        return []  # one writer per SQLite store

    def inbound_position(self, source: str) -> int:
        row = (
            self.reader().execute("SELECT lsn FROM inbound_positions WHERE source = ?", (source,)).fetchone()
        )
        return int(row[0]) if row else 0

    def outbound_acks(self) -> dict[str, int]:
        rows = self.reader().execute("SELECT target, lsn FROM outbound_acks ORDER BY target")
        return {target: int(lsn) for target, lsn in rows}

    def subject_keys(self, subject_id: str) -> list[tuple[str, str]]:
        rows = (
            self.reader()
            .execute(
                "SELECT namespace, key FROM subject_keys WHERE subject = ? ORDER BY namespace, key",
                (subject_id,),
            )
            .fetchall()
        )
        return [(str(n), str(k)) for n, k in rows]

    def namespaces(self) -> list[str]:
        # A loose index scan: one index probe per namespace, not one row per key.
        rows = (
            self.reader()
            .execute(
                "WITH RECURSIVE ns(name) AS ("
                " SELECT MIN(namespace) FROM kv"
                " UNION ALL"
                " SELECT (SELECT MIN(namespace) FROM kv WHERE namespace > ns.name) FROM ns"
                " WHERE ns.name IS NOT NULL)"
                " SELECT name FROM ns WHERE name IS NOT NULL"
            )
            .fetchall()
        )
        return [str(r[0]) for r in rows]

    def counts(self) -> StoreCounts:
        values = dict(self.reader().execute("SELECT name, value FROM counters").fetchall())
        return StoreCounts(records=int(values["records"]), tombstones=int(values["tombstones"]))

    def get_meta(self, name: str) -> bytes | None:
        row = self.reader().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def store_max(self, name: str) -> int:
        return _number(
            self.reader().execute("SELECT value FROM meta WHERE name = ?", (_MAX + name,)).fetchone()
        )

    def blocked_subjects(self) -> dict[str, str]:
        rows = self.reader().execute("SELECT digest, request_id FROM erased_subjects").fetchall()
        return {str(d): str(r) for d, r in rows}

    def read_audit_outbox(self, after_lsn: int) -> list[tuple[int, bytes]]:
        rows = (
            self.reader()
            .execute("SELECT lsn, body FROM audit_outbox WHERE lsn > ? ORDER BY lsn", (after_lsn,))
            .fetchall()
        )
        return [(int(lsn), bytes(body)) for lsn, body in rows]

    def read_audit_received(self, after_seq: int) -> list[tuple[int, bytes]]:
        rows = (
            self.reader()
            .execute("SELECT seq, body FROM audit_received WHERE seq > ? ORDER BY seq", (after_seq,))
            .fetchall()
        )
        return [(int(seq), bytes(body)) for seq, body in rows]

    def last_audit_received(self) -> int:
        row = (
            self.reader().execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_received'").fetchone()
        )
        return int(row[0]) if row else 0

    def states_after(self, namespace: str, after_key: str, limit: int) -> list[tuple[str, bytes]]:
        rows = self.reader().execute(
            "SELECT key, state FROM kv WHERE namespace = ? AND key > ? ORDER BY key LIMIT ?",
            (namespace, after_key, limit),
        )
        return [(str(key), bytes(blob)) for key, blob in rows]

    def dead_states(self, after: tuple[str, str], limit: int) -> list[SnapshotRow]:
        rows = self.reader().execute(
            "SELECT namespace, key, state FROM kv INDEXED BY kv_dead WHERE live = 0 "
            "AND (namespace > ? OR (namespace = ? AND key > ?)) ORDER BY namespace, key LIMIT ?",
            (after[0], after[0], after[1], limit),
        )
        return [(str(n), str(k), bytes(s)) for n, k, s in rows]

    @contextmanager
    def snapshot_at(self) -> Iterator[tuple[int, Iterator[SnapshotRow]]]:
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            # The first read starts the WAL snapshot; the states below are read in it too.
            (last,) = conn.execute("SELECT value FROM counters WHERE name = 'last_lsn'").fetchone()
            rows = conn.execute("SELECT namespace, key, state FROM kv ORDER BY namespace, key")
            yield int(last), ((str(n), str(k), bytes(s)) for n, k, s in rows)
        finally:
            conn.close()

    @contextmanager
    def snapshot(self) -> Iterator[Iterator[SnapshotRow]]:
        # A connection of its own, in one read transaction: WAL keeps its snapshot for as long
        # as the iteration takes, while writes go on.
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            rows = conn.execute("SELECT namespace, key, state FROM kv ORDER BY namespace, key")
            yield ((str(n), str(k), bytes(s)) for n, k, s in rows)
        finally:
            conn.close()


class SQLiteEngine(EngineCore):
    """The engine core over one SQLite file."""

    def __init__(
        self, path: str | os.PathLike[str], node_id: str, region: str, *, synchronous: str = "FULL"
    ) -> None:
        check_identity(node_id, region)
        self.sqlite = SQLiteBackend(path, node_id, region, synchronous=synchronous)
        super().__init__(self.sqlite, node_id, region)
        self.path = self.sqlite.path
        self.synchronous = self.sqlite.synchronous

    # The connections, for tests that look at SQLite itself.
    @property
    def _writer(self) -> sqlite3.Connection:
        return self.sqlite.writer

    @property
    def _readers(self) -> set[sqlite3.Connection]:
        return self.sqlite.readers

    def _reader(self) -> sqlite3.Connection:
        return self.sqlite.reader()


def _load_states(conn: sqlite3.Connection, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
    states: dict[str, bytes] = {}
    for i in range(0, len(keys), _LOAD_CHUNK_KEYS):
        chunk = keys[i : i + _LOAD_CHUNK_KEYS]
        if len(chunk) == 1:
            rows = conn.execute(
                "SELECT key, state FROM kv WHERE namespace = ? AND key = ?", (namespace, chunk[0])
            )
        else:
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT key, state FROM kv WHERE namespace = ? AND key IN ({marks})", (namespace, *chunk)
            )
        for key, blob in rows:
            states[str(key)] = bytes(blob)
    return states


def _index_subjects(tx: sqlite3.Connection) -> None:
    """Version 2 added the subject index: build it from the stored states."""
    tx.execute(_SUBJECT_KEYS)
    for namespace, key, blob in tx.execute("SELECT namespace, key, state FROM kv").fetchall():
        state = decode_state(namespace, key, blob)
        tx.executemany(
            "INSERT OR IGNORE INTO subject_keys (subject, namespace, key) VALUES (?, ?, ?)",
            [(v.subject_id, namespace, key) for v in state.versions if v.subject_id],
        )


def _add_audit_outbox(tx: sqlite3.Connection) -> None:
    """Version 4 commits the audit entries of local writes with the writes (the outbox)."""
    tx.execute(_AUDIT_OUTBOX.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))


def _index_dead(tx: sqlite3.Connection) -> None:
    """Version 5 indexes the keys with no live version (tombstone garbage collection)."""
    tx.execute(_KV_DEAD.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))


def _add_audit_received(tx: sqlite3.Connection) -> None:
    """Version 6 commits the audit entries of replicated applies with the applies."""
    tx.execute(_AUDIT_RECEIVED.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))


def _move_erased_subjects(tx: sqlite3.Connection) -> None:
    """Version 3 keeps the erasure block list in a table of its own, one row per subject,
    instead of one JSON blob in meta that every erasure rewrote whole."""
    tx.execute(_ERASED_SUBJECTS.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
    row = tx.execute("SELECT value FROM meta WHERE name = ?", (_BLOCKED_META_V2,)).fetchone()
    if row is None:
        return
    try:
        blocked = json.loads(row[0])
    except ValueError as error:
        raise FailedPrecondition(
            f"the erasure block list in meta {_BLOCKED_META_V2!r} is not JSON ({error}); "
            "it cannot be moved to its table, so the store is left at schema version 2"
        ) from None
    if not isinstance(blocked, dict) or not all(
        isinstance(d, str) and isinstance(r, str) for d, r in blocked.items()
    ):
        raise FailedPrecondition(
            f"the erasure block list in meta {_BLOCKED_META_V2!r} is not a mapping of digests to "
            "request ids; the store is left at schema version 2"
        )
    tx.executemany("INSERT INTO erased_subjects (digest, request_id) VALUES (?, ?)", sorted(blocked.items()))
    tx.execute("DELETE FROM meta WHERE name = ?", (_BLOCKED_META_V2,))
