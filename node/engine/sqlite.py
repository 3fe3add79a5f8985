"""The default storage engine: one SQLite database per node, in WAL mode.

One write connection (guarded by a lock) runs every write transaction; each reading thread gets
its own connection, so reads never wait for a commit (WAL readers see the last committed
snapshot). Key states and change-log entries are stored in their protobuf form
(domicile.wire.records), and every version's checksum is verified when it is read back.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from domicile import causality, sqlite_db
from domicile.causality import Dot, KeyState, Mutation, Version
from domicile.errors import DataCorruption, DomicileError, FailedPrecondition, InvalidArgument, Unavailable
from domicile.model import Classification, check_namespace_name, check_node_id
from domicile.wire.records import (
    key_state_from_bytes,
    key_state_to_bytes,
    mutation_from_bytes,
    mutation_to_bytes,
)
from node.engine.base import GET_MANY_KEYS_MAX, ApplyOutcome, Committed, LocalWrite, StoreCounts

SCHEMA_VERSION = 2
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL")
BUSY_TIMEOUT_MS = 10_000
SCAN_RECORDS_MAX = 10_000
LOG_READ_RECORDS_MAX = 10_000
APPLY_BATCH_RECORDS_MAX = 10_000
META_NAME_CHARS_MAX = 255
META_VALUE_BYTES_MAX = 4 * 1024 * 1024
# Counters are stored as protobuf uint64 and checked below 2^62 on the wire (domicile.wire.records).
DOT_COUNTER_MAX = (1 << 62) - 1

# Which keys hold versions about which data subject (live or tombstoned): erasure and export
# find a subject's records without scanning the store. Rows are never removed: a tombstone
# keeps its subject.
_SUBJECT_KEYS = (
    "CREATE TABLE subject_keys (subject TEXT NOT NULL, namespace TEXT NOT NULL, key TEXT NOT NULL, "
    "PRIMARY KEY (subject, namespace, key)) WITHOUT ROWID"
)

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


@dataclass
class _Totals:
    """The running totals, as the current write transaction moves them."""

    records: int = 0
    tombstones: int = 0
    last_lsn: int = 0

    def move(self, existed: bool, live_before: bool, live_after: bool) -> None:
        if existed:
            if live_before:
                self.records -= 1
            else:
                self.tombstones -= 1
        if live_after:
            self.records += 1
        else:
            self.tombstones += 1


_Key = tuple[str, str]
_LOAD_CHUNK_KEYS = 500


class _WorkingSet:
    """The key states one write transaction touches: loaded in bulk, updated in memory (so a
    write sees the earlier writes of its batch), written back once per key."""

    def __init__(self, tx: sqlite3.Connection, keys: Sequence[_Key]) -> None:
        self._loaded: dict[_Key, KeyState | DataCorruption] = {}
        self._dirty: dict[_Key, KeyState] = {}
        by_namespace: dict[str, list[str]] = {}
        for namespace, key in dict.fromkeys(keys):
            by_namespace.setdefault(namespace, []).append(key)
        for namespace, names in by_namespace.items():
            for i in range(0, len(names), _LOAD_CHUNK_KEYS):
                chunk = names[i : i + _LOAD_CHUNK_KEYS]
                marks = ", ".join("?" * len(chunk))
                rows = _execute(
                    tx,
                    f"SELECT key, state FROM kv WHERE namespace = ? AND key IN ({marks})",
                    (namespace, *chunk),
                )
                for key, blob in rows:
                    try:
                        self._loaded[(namespace, key)] = _decode_state(namespace, key, blob)
                    except DataCorruption as error:
                        self._loaded[(namespace, key)] = error

    def get(self, namespace: str, key: str) -> KeyState | None:
        k = (namespace, key)
        state = self._dirty.get(k)
        if state is not None:
            return state
        loaded = self._loaded.get(k)
        if isinstance(loaded, DataCorruption):
            raise loaded
        return loaded

    def put(self, namespace: str, key: str, state: KeyState) -> None:
        self._dirty[(namespace, key)] = state

    def flush(self, tx: sqlite3.Connection, totals: _Totals) -> None:
        rows = []
        for (namespace, key), state in self._dirty.items():
            before = self._loaded.get((namespace, key))
            live = state.has_live()
            totals.move(before is not None, isinstance(before, KeyState) and before.has_live(), live)
            rows.append((namespace, key, key_state_to_bytes(state), int(live)))
        tx.executemany(
            "INSERT INTO kv (namespace, key, state, live) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (namespace, key) DO UPDATE SET state = excluded.state, live = excluded.live",
            rows,
        )
        tx.executemany(
            "INSERT OR IGNORE INTO subject_keys (subject, namespace, key) VALUES (?, ?, ?)",
            [
                (subject, namespace, key)
                for (namespace, key), state in self._dirty.items()
                for subject in {v.subject_id for v in state.versions if v.subject_id}
            ],
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


class SQLiteEngine:
    """StorageEngine on SQLite. `synchronous` is FULL by default (a commit is on disk when
    commit_local returns); NORMAL and OFF exist for benchmarks."""

    def __init__(
        self, path: str | os.PathLike[str], node_id: str, region: str, *, synchronous: str = "FULL"
    ) -> None:
        check_node_id(node_id)
        if not region:
            raise InvalidArgument("region is empty; a storage engine belongs to one region")
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
        self._local = threading.local()
        self._readers: set[sqlite3.Connection] = set()
        self._readers_lock = threading.Lock()
        self._writer = self._connect()
        try:
            self._prepare()
        except BaseException:
            self._writer.close()
            raise

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        pragmas = sqlite_db.Pragmas(synchronous=self.synchronous, busy_timeout_ms=BUSY_TIMEOUT_MS)
        return sqlite_db.connect(self.path, pragmas, label=self.path)

    def _prepare(self) -> None:
        conn = self._writer
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
            upgrades={1: _index_subjects},
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

    def _reader(self) -> sqlite3.Connection:
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
            self._readers.add(conn)
        slot = _ReaderSlot(conn)
        weakref.finalize(slot, _drop_reader, conn, self._readers)
        self._local.slot = slot
        return conn

    @contextmanager
    def _write_tx(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            if self._closed:
                raise Unavailable("storage engine is closed")
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._write_lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            readers = self._readers.copy()
            self._readers.clear()
            for conn in readers:
                conn.close()
            self._writer.close()

    # -- writes ------------------------------------------------------------------------------

    def commit_local(
        self, writes: Sequence[LocalWrite], stamp: Callable[[], int]
    ) -> list[Committed | DomicileError]:
        if not writes:
            return []
        # Everything that can refuse a single write runs before anything is written, and a
        # refused write leaves no trace in the working set, so it changes nothing while the
        # others still commit.
        refusals = [_local_write_error(w) for w in writes]
        with self._write_tx() as tx:
            totals = _read_totals(tx)
            work = _WorkingSet(
                tx, [(w.namespace, w.key) for w, r in zip(writes, refusals, strict=True) if r is None]
            )
            results: list[Committed | DomicileError] = []
            log_rows: list[tuple[int, str, str, bytes]] = []
            for write, refusal in zip(writes, refusals, strict=True):
                if refusal is not None:
                    results.append(refusal)
                    continue
                try:
                    committed = self._build_local(work.get(write.namespace, write.key), write, stamp, totals)
                except DomicileError as error:
                    results.append(error)
                    continue
                mutation = committed.mutation
                work.put(write.namespace, write.key, committed.state)
                log_rows.append((mutation.lsn, write.namespace, write.key, mutation_to_bytes(mutation)))
                totals.last_lsn = mutation.lsn
                results.append(committed)
            tx.executemany(
                "INSERT INTO changelog (lsn, namespace, key, mutation) VALUES (?, ?, ?, ?)", log_rows
            )
            work.flush(tx, totals)
            _store_totals(tx, totals)
        return results

    def _build_local(
        self, state: KeyState | None, write: LocalWrite, stamp: Callable[[], int], totals: _Totals
    ) -> Committed:
        # This node's counters in a context can only be ones it issued for the key: a context
        # beyond them is forged, and would push the key's next dot toward the counter limit
        # (close enough, and every later write to the key fails).
        issued = state.context.max_counter(self.node_id) if state else 0
        claimed = write.supersedes.max_counter(self.node_id) if write.supersedes is not None else 0
        if claimed > issued:
            raise InvalidArgument(
                f"causal context for {write.namespace}/{write.key} names counter {claimed} of this node "
                f"{self.node_id!r}, which has issued only up to {issued} for the key; pass back a context "
                "returned by a read, put or delete of this key"
            )
        version = Version(
            dot=Dot(self.node_id, 0),
            value=bytes(write.value),
            hlc=stamp(),
            tombstone=write.tombstone,
            content_type=write.content_type,
            subject_id=write.subject_id,
            subject_jurisdiction=write.subject_jurisdiction,
            classification=Classification(write.classification),
            checksum=causality.sha256(write.value),
            origin_region=self.region,
        )
        mutation, applied = causality.local_write(
            state,
            namespace=write.namespace,
            key=write.key,
            node_id=self.node_id,
            supersedes=write.supersedes,
            version=version,
        )
        if mutation.version.dot.counter > DOT_COUNTER_MAX:
            raise InvalidArgument(
                f"causal context for {write.namespace}/{write.key} carries a counter past 2^62-1 for "
                f"node {self.node_id!r}; pass back a context returned by a read"
            )
        mutation = Mutation(
            mutation.namespace,
            mutation.key,
            mutation.context,
            mutation.version,
            lsn=totals.last_lsn + 1,
            origin_node_id=self.node_id,
        )
        had_live = state is not None and state.has_live()
        return Committed(mutation=mutation, state=applied.state, had_live=had_live, conflict=applied.conflict)

    def apply_remote(
        self, source_node_id: str, mutations: Sequence[Mutation], through_lsn: int
    ) -> ApplyOutcome:
        if not source_node_id:
            raise InvalidArgument("source node id is empty; name the node the mutations came from")
        if through_lsn < 0:
            raise InvalidArgument(f"source position {through_lsn} is negative; positions start at 0")
        if len(mutations) > APPLY_BATCH_RECORDS_MAX:
            raise InvalidArgument(
                f"batch of {len(mutations)} mutations; at most {APPLY_BATCH_RECORDS_MAX} are applied at once"
            )
        for m in mutations:
            _check_remote_mutation(source_node_id, m)
        applied: list[Mutation] = []
        duplicates = 0
        conflicts = 0
        with self._write_tx() as tx:
            totals = _read_totals(tx)
            work = _WorkingSet(tx, [(m.namespace, m.key) for m in mutations])
            for m in mutations:
                result = causality.apply(work.get(m.namespace, m.key), m)
                if not result.changed:
                    duplicates += 1
                    continue
                work.put(m.namespace, m.key, result.state)
                applied.append(m)
                if result.conflict:
                    conflicts += 1
            work.flush(tx, totals)
            tx.execute(
                "INSERT INTO inbound_positions (source, lsn) VALUES (?, ?) "
                "ON CONFLICT (source) DO UPDATE SET lsn = MAX(lsn, excluded.lsn)",
                (source_node_id, through_lsn),
            )
            (position,) = tx.execute(
                "SELECT lsn FROM inbound_positions WHERE source = ?", (source_node_id,)
            ).fetchone()
            _store_totals(tx, totals)
        return ApplyOutcome(tuple(applied), duplicates, conflicts, int(position))

    def record_outbound_ack(self, target_node_id: str, lsn: int) -> None:
        if not target_node_id:
            raise InvalidArgument("target node id is empty; name the node that acknowledged")
        if lsn < 0:
            raise InvalidArgument(f"acknowledged position {lsn} is negative; positions start at 0")
        with self._write_tx() as tx:
            tx.execute(
                "INSERT INTO outbound_acks (target, lsn) VALUES (?, ?) "
                "ON CONFLICT (target) DO UPDATE SET lsn = MAX(lsn, excluded.lsn)",
                (target_node_id, lsn),
            )

    def put_meta(self, name: str, value: bytes) -> None:
        _check_meta_name(name)
        if len(value) > META_VALUE_BYTES_MAX:
            raise InvalidArgument(
                f"meta value {name!r} is {len(value)} bytes; the limit is {META_VALUE_BYTES_MAX} bytes"
            )
        with self._write_tx() as tx:
            tx.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, bytes(value)),
            )

    # -- reads -------------------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> KeyState | None:
        return _load_state(self._reader(), namespace, key)

    def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, KeyState]:
        if len(keys) > GET_MANY_KEYS_MAX:
            raise InvalidArgument(
                f"get_many of {len(keys)} keys; read at most {GET_MANY_KEYS_MAX} keys at once"
            )
        conn = self._reader()
        names = list(dict.fromkeys(keys))
        states: dict[str, KeyState] = {}
        for i in range(0, len(names), _LOAD_CHUNK_KEYS):
            chunk = names[i : i + _LOAD_CHUNK_KEYS]
            marks = ", ".join("?" * len(chunk))
            rows = _execute(
                conn,
                f"SELECT key, state FROM kv WHERE namespace = ? AND key IN ({marks})",
                (namespace, *chunk),
            ).fetchall()
            for key, blob in rows:
                states[key] = _decode_state(namespace, key, blob)
        return states

    def scan(self, namespace: str, prefix: str, start_after: str, limit: int) -> list[tuple[str, KeyState]]:
        if not 1 <= limit <= SCAN_RECORDS_MAX:
            raise InvalidArgument(f"scan limit {limit} is out of range; use 1 to {SCAN_RECORDS_MAX}")
        inclusive = start_after < prefix
        upper = prefix_upper_bound(prefix)
        params: tuple[object, ...] = (namespace, prefix if inclusive else start_after)
        if upper is not None:
            params += (upper,)
        sql = _SCAN_SQL[(inclusive, upper is not None)]
        rows = _execute(self._reader(), sql, (*params, limit)).fetchall()
        return [(key, _decode_state(namespace, key, blob)) for key, blob in rows]

    def read_log(self, after_lsn: int, limit: int) -> list[Mutation]:
        if after_lsn < 0:
            raise InvalidArgument(f"log position {after_lsn} is negative; positions start at 0")
        if not 1 <= limit <= LOG_READ_RECORDS_MAX:
            raise InvalidArgument(f"log read limit {limit} is out of range; use 1 to {LOG_READ_RECORDS_MAX}")
        rows = self._reader().execute(
            "SELECT lsn, namespace, key, mutation FROM changelog WHERE lsn > ? ORDER BY lsn LIMIT ?",
            (after_lsn, limit),
        )
        return [_decode_log_entry(lsn, namespace, key, blob) for lsn, namespace, key, blob in rows]

    def last_lsn(self) -> int:
        (value,) = self._reader().execute("SELECT value FROM counters WHERE name = 'last_lsn'").fetchone()
        return int(value)

    def inbound_position(self, source_node_id: str) -> int:
        row = _execute(
            self._reader(), "SELECT lsn FROM inbound_positions WHERE source = ?", (source_node_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def outbound_acks(self) -> dict[str, int]:
        rows = self._reader().execute("SELECT target, lsn FROM outbound_acks ORDER BY target")
        return {target: int(lsn) for target, lsn in rows}

    def subject_keys(self, subject_id: str) -> list[tuple[str, str]]:
        rows = (
            self._reader()
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
            self._reader()
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
        values = dict(self._reader().execute("SELECT name, value FROM counters").fetchall())
        return StoreCounts(records=int(values["records"]), tombstones=int(values["tombstones"]))

    def get_meta(self, name: str) -> bytes | None:
        _check_meta_name(name)
        row = self._reader().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string that starts with prefix (None when there is
    none). SQLite compares TEXT as UTF-8 bytes, which orders like code points, like Python."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code <= 0x10FFFF:
            if 0xD800 <= code <= 0xDFFF:
                code = 0xE000  # surrogates cannot be stored as UTF-8
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _index_subjects(tx: sqlite3.Connection) -> None:
    """Version 2 added the subject index: build it from the stored states."""
    tx.execute(_SUBJECT_KEYS)
    for namespace, key, blob in tx.execute("SELECT namespace, key, state FROM kv").fetchall():
        state = _decode_state(namespace, key, blob)
        tx.executemany(
            "INSERT OR IGNORE INTO subject_keys (subject, namespace, key) VALUES (?, ?, ?)",
            [(v.subject_id, namespace, key) for v in state.versions if v.subject_id],
        )


def _execute(conn: sqlite3.Connection, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
    try:
        return conn.execute(sql, params)
    except UnicodeEncodeError:
        raise InvalidArgument(
            "a namespace, key or prefix is not valid Unicode text (it contains a lone surrogate)"
        ) from None


def _load_state(conn: sqlite3.Connection, namespace: str, key: str) -> KeyState | None:
    row = _execute(conn, "SELECT state FROM kv WHERE namespace = ? AND key = ?", (namespace, key)).fetchone()
    return None if row is None else _decode_state(namespace, key, row[0])


def _decode_state(namespace: str, key: str, blob: bytes) -> KeyState:
    try:
        state = key_state_from_bytes(blob)
    except (DecodeError, DomicileError) as error:
        raise DataCorruption(f"stored state of {namespace}/{key} cannot be decoded ({error})") from None
    for v in state.versions:
        if not v.checksum_ok():
            raise DataCorruption(
                f"stored value of {namespace}/{key} (version {v.dot.node_id}:{v.dot.counter}) failed its "
                "sha256 checksum; the node needs repair from a replica or backup"
            )
    return state


def _decode_log_entry(lsn: int, namespace: str, key: str, blob: bytes) -> Mutation:
    try:
        mutation = mutation_from_bytes(blob)
    except (DecodeError, DomicileError) as error:
        raise DataCorruption(
            f"change-log entry {lsn} ({namespace}/{key}) cannot be decoded ({error})"
        ) from None
    if not mutation.version.checksum_ok():
        raise DataCorruption(
            f"change-log entry {lsn} ({namespace}/{key}) failed its sha256 checksum; "
            "the node needs repair from a replica or backup"
        )
    return mutation


def _read_totals(tx: sqlite3.Connection) -> _Totals:
    values = dict(tx.execute("SELECT name, value FROM counters").fetchall())
    return _Totals(records=values["records"], tombstones=values["tombstones"], last_lsn=values["last_lsn"])


def _store_totals(tx: sqlite3.Connection, totals: _Totals) -> None:
    tx.executemany(
        "UPDATE counters SET value = ? WHERE name = ?",
        [(totals.records, "records"), (totals.tombstones, "tombstones"), (totals.last_lsn, "last_lsn")],
    )


def _check_text(what: str, text: str) -> None:
    if not text:
        raise InvalidArgument(f"{what} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"{what} {text!r} is not valid Unicode text (it contains a lone surrogate)"
        ) from None
    if "\x00" in text:
        raise InvalidArgument(f"{what} {text!r} contains a NUL character, which is not allowed")


def _check_meta_name(name: str) -> None:
    if not name or len(name) > META_NAME_CHARS_MAX:
        raise InvalidArgument(f"meta name {name!r} must be 1 to {META_NAME_CHARS_MAX} characters")
    _check_text("meta name", name)


def _local_write_error(write: LocalWrite) -> DomicileError | None:
    try:
        _check_local_write(write)
    except DomicileError as error:
        return error
    return None


def _check_local_write(write: LocalWrite) -> None:
    check_namespace_name(write.namespace)
    _check_text("key", write.key)
    if write.tombstone and write.value:
        raise InvalidArgument(
            f"delete of {write.namespace}/{write.key} carries a value; a tombstone has none"
        )
    try:
        Classification(write.classification)
    except ValueError:
        raise InvalidArgument(
            f"unknown classification {write.classification!r} for {write.namespace}/{write.key}; "
            f"allowed: {', '.join(str(int(c)) for c in Classification)}"
        ) from None


def _check_remote_mutation(source: str, m: Mutation) -> None:
    check_namespace_name(m.namespace)
    _check_text("key", m.key)
    dot = m.version.dot
    if not dot.node_id or not 1 <= dot.counter <= DOT_COUNTER_MAX:
        raise InvalidArgument(
            f"mutation for {m.namespace}/{m.key} from {source} has dot {dot.node_id!r}:{dot.counter}; "
            "a dot needs a node id and a counter from 1 to 2^62-1"
        )
    if m.context.covers(dot):
        raise InvalidArgument(
            f"mutation for {m.namespace}/{m.key} from {source} supersedes its own dot "
            f"{dot.node_id}:{dot.counter}"
        )
    if not m.version.checksum_ok():
        raise DataCorruption(
            f"mutation for {m.namespace}/{m.key} from {source} (version {dot.node_id}:{dot.counter}) "
            "failed its sha256 checksum; the batch was not applied"
        )
