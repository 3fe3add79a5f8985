"""The region's data keys: one per (subject, key class), wrapped by the region's key-encryption
key (KEK) and kept in their own SQLite file, never in the record store.

Crypto-shredding rests on one property: once destroy() returns, the wrapped key is in no file
of the key store, so every copy of the records sealed under it (old database files, backups,
replicas' disks) is unreadable. Three things give that property:
- `secure_delete` overwrites deleted rows (and pages freed or rebuilt around them) with zeros;
- the WAL, which may still hold older images of those pages, is checkpointed into the database
  and truncated to zero bytes before destroy() returns;
- the rows live in a WITHOUT ROWID table, so the key is stored once (no separate index copy).

Writes go through one writer thread (a domicile.single_writer.SingleWriter) that owns the write
connection. New keys that wait together are committed in one transaction, so a burst of new
subjects (a bulk load) costs one fsync instead of one each; a destruction runs alone, in queue
order, with its WAL checkpoint. Each caller blocks until its write is durable. Because one
thread makes every write, and changes the cache under the cache lock before its callers hear
back, the cache follows the file: a key created before a destruction is evicted by it, and one
created after it is a new key. The writer looks in the cache and the file before it inserts,
so callers asking for the same new key together all get the one it creates.

Reads stay on the caller's thread: a cache hit takes only the cache lock; a miss reads the file
through one read connection under a lock of its own (a primary-key lookup: microseconds, so one
connection is enough, and close() can be sure no read is using it), so no reader waits for an
fsync; only a miss that finds no key and must create one waits for the writer. A miss that read
a key just before a destruction must not put it back in the cache after the destruction evicted
it: each destruction moves a generation under the cache lock once its delete has committed, and
a reader caches what it read only when the generation has not moved since it began. The read
connection finishes every statement it runs, so it never holds a snapshot that would keep
destroy's checkpoint from truncating the WAL.

A destroyed key is never created again. Destruction leaves a marker (a keyed hash of the
subject, never the subject id itself, and the class, or `*` for every class) in the same
transaction as the delete, and the writer refuses to create a key that a marker names. Without
it, a write that was already past the erasure block when the erasure ran would create a fresh
key and store the subject's data again, readable, after the erasure reported it gone.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import secrets
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domicile import sqlite_db
from domicile.errors import DataCorruption, FailedPrecondition, InvalidArgument, Unavailable
from domicile.single_writer import SingleWriter
from domicile.subjects import SUBJECT_ID_BYTES_MAX
from node.keyfiles import ensure_private_file, read_or_create

log = logging.getLogger("domicile.keyring")

KEK_FILE = "kek.key"
KEYRING_FILE = "keys.sqlite3"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WRAPPED_BYTES = NONCE_BYTES + KEY_BYTES + TAG_BYTES
KEY_CLASS_BYTES_MAX = 128
# A subject has one key per retention class it has records in; a handful in practice.
KEY_CLASSES_PER_SUBJECT_MAX = 64
CACHE_ENTRIES_LIMIT = 1_000_000
# 2: destroyed_keys, the markers that keep a destroyed key from being created again.
SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 10_000
# Callers are the offload pool's few threads and erasures, so the queues stay short; the bounds
# only keep a runaway caller from piling up work behind a stuck disk.
BATCH_KEYS_MAX_DEFAULT = 256
QUEUE_KEYS_MAX_DEFAULT = 4096
QUEUE_DESTRUCTIONS_MAX_DEFAULT = 256
# The daemon gives closing the key ring and the record store 10 s together.
CLOSE_TIMEOUT_S = 5.0
_PRAGMAS = sqlite_db.Pragmas(synchronous="FULL", busy_timeout_ms=BUSY_TIMEOUT_MS, secure_delete=True)

# Domain separation: a wrapped data key is bound to its subject and class, so a row copied to
# another subject does not unwrap.
_WRAP_AAD_PREFIX = b"domicile/data-key/v1\x00"

_MARKER_KEY_LABEL = b"domicile/destroyed-key-marker/v1"
# The class a marker names when every class of the subject was destroyed.
ALL_CLASSES = "*"
_DESTROYED_KEYS_TABLE = (
    "CREATE TABLE destroyed_keys (subject_hash BLOB NOT NULL, key_class TEXT NOT NULL,"
    " PRIMARY KEY (subject_hash, key_class)) WITHOUT ROWID"
)
_SCHEMA = (
    "CREATE TABLE data_keys ("
    " subject_id TEXT NOT NULL, key_class TEXT NOT NULL, wrapped BLOB NOT NULL,"
    " PRIMARY KEY (subject_id, key_class)) WITHOUT ROWID",
    _DESTROYED_KEYS_TABLE,
)


def load_or_create_kek(data_dir: Path) -> bytes:
    """The region's key-encryption key (kek.key in data_dir, 32 random bytes, mode 0600),
    created on first use."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    kek = read_or_create(directory / KEK_FILE, lambda: secrets.token_bytes(KEY_BYTES))
    if len(kek) != KEY_BYTES:
        raise FailedPrecondition(
            f"{KEK_FILE} is {len(kek)} bytes; it must be {KEY_BYTES} random bytes. Restore it from "
            "backup: without it no data key of this region can be unwrapped"
        )
    return kek


@dataclass
class _Create:
    ident: tuple[str, str]
    result: Future[bytes]


@dataclass
class _Destroy:
    subject: str
    classes: list[str] | None
    result: Future[int]


_Write = _Create | _Destroy


def _answer(future: Future[Any], result: object) -> None:
    # A batch can fail after some of its items were answered (from the cache); those keep
    # their answer.
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _reject(items: list[_Write], error: Exception) -> None:
    for item in items:
        _answer(item.result, error)


class Keyring:
    """Data keys of one region. Thread-safe; close() it when the node stops."""

    def __init__(
        self,
        path: Path,
        kek: bytes,
        *,
        cache_entries_max: int = 4096,
        batch_keys_max: int = BATCH_KEYS_MAX_DEFAULT,
        queue_keys_max: int = QUEUE_KEYS_MAX_DEFAULT,
        queue_destructions_max: int = QUEUE_DESTRUCTIONS_MAX_DEFAULT,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_batch(size, seconds)` runs on the writer thread after each batch of writes it
        handled without error (its callers are answered by then)."""
        if len(kek) != KEY_BYTES:
            raise InvalidArgument(f"the key-encryption key is {len(kek)} bytes; it must be {KEY_BYTES}")
        if not 1 <= cache_entries_max <= CACHE_ENTRIES_LIMIT:
            raise InvalidArgument(
                f"cache_entries_max is {cache_entries_max}; it must be 1..{CACHE_ENTRIES_LIMIT}"
            )
        for name, value in (
            ("batch_keys_max", batch_keys_max),
            ("queue_keys_max", queue_keys_max),
            ("queue_destructions_max", queue_destructions_max),
        ):
            if value < 1:
                raise InvalidArgument(f"{name} is {value}; it must be at least 1")
        self.path = Path(path)
        self.cache_entries_max = cache_entries_max
        self._kek = AESGCM(bytes(kek))
        self._marker_key = hmac.new(bytes(kek), _MARKER_KEY_LABEL, hashlib.sha256).digest()
        self._writer: SingleWriter[_Write] = SingleWriter(
            self._write,
            _reject,
            name="domicile-keyring-writer",
            batch_max=batch_keys_max,
            queue_max=queue_keys_max,
            full_message=(
                f"the key store's write queue is full ({queue_keys_max} new data keys waiting); "
                "retry after a short back-off"
            ),
            solo_max=queue_destructions_max,
            solo_full_message=(
                f"the key store's write queue is full ({queue_destructions_max} key destructions "
                "waiting); retry after a short back-off"
            ),
            refused=lambda state, failure: Unavailable(f"the key store {self.path.name} is closed"),
            stopped=lambda failure: Unavailable(
                f"the key store {self.path.name} closed before this write ran; retry"
            ),
            on_batch=on_batch,
            on_exit=self._close_write_connection,
        )
        # Lock order: _read_lock, then _cache_lock. Cache hits take only _cache_lock; the writer
        # never takes _read_lock, so neither a hit nor a miss waits for an fsync.
        self._cache_lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
        # Moves (under _cache_lock) when keys are destroyed or the keyring closes.
        self._generation = 0
        self._read_lock = threading.Lock()
        # Written by the writer thread only.
        self.batches_committed = 0
        self.keys_created = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite creates the WAL and shared-memory files with the database file's mode.
        ensure_private_file(self.path)
        # Opened here so that an unusable file is refused by the constructor; from now on only
        # the writer thread uses it.
        self._conn: sqlite3.Connection | None = self._open()
        try:
            self._reader: sqlite3.Connection | None = sqlite_db.connect(
                self.path, _PRAGMAS, label=self.path.name, query_only=True
            )
        except BaseException:
            self._conn.close()
            raise
        self._writer.start()

    # -- keys -----------------------------------------------------------------------------------

    def data_key(self, subject_id: str, key_class: str, *, create: bool) -> bytes | None:
        """The subject's 32-byte data key for key_class. When there is none: None, or with
        `create` a new one, committed durably before it is returned; FailedPrecondition when
        that key was destroyed (a destroyed key is never created again).

        Creating commits with an fsync (and waits for the writer thread): call it with
        create=True off the event loop."""
        ident = _check_ident(subject_id, key_class)
        cached = self._cached(ident)
        if cached is not None:
            return cached
        with self._cache_lock:
            generation = self._generation
        with self._read_lock:
            conn = self._read_connection()
            try:
                wrapped = _select_wrapped(conn, ident)
            except sqlite3.Error as error:
                raise _unavailable("read", self.path, error) from error
        if wrapped is None:
            if not create:
                return None
            future: Future[bytes] = Future()
            self._writer.put(_Create(ident, future))
            return future.result()
        key = self._unwrap(ident, wrapped)
        with self._cache_lock:
            if self._generation == generation:
                self._remember(ident, key)
        return key

    def destroy(self, subject_id: str, key_classes: Iterable[str] | None = None) -> int:
        """Destroys the subject's data keys of `key_classes` (all of them when None) and returns
        how many existed. When it returns, the wrapped keys are in no file of the key store;
        when it raises, call it again (it finishes clearing what an earlier call deleted)."""
        subject = _check_subject(subject_id)
        classes: list[str] | None = None
        if key_classes is not None:
            if isinstance(key_classes, str | bytes):
                raise InvalidArgument(
                    "key_classes is a single string; pass a list of key class names (or None for all)"
                )
            classes = sorted(set(key_classes))
            if len(classes) > KEY_CLASSES_PER_SUBJECT_MAX:
                raise InvalidArgument(
                    f"{len(classes)} key classes named; a subject has at most {KEY_CLASSES_PER_SUBJECT_MAX}"
                )
            for name in classes:
                _check_key_class(name)
        future: Future[int] = Future()
        self._writer.put_solo(_Destroy(subject, classes, future))
        return future.result()

    def was_destroyed(self, subject_id: str, key_class: str) -> bool:
        """Whether the subject's key of key_class was destroyed here (so it is never created
        again, and nothing of that class about the subject can be sealed here). Blocks on a
        read of the key store."""
        ident = _check_ident(subject_id, key_class)
        with self._read_lock:
            conn = self._read_connection()
            try:
                return _was_destroyed(conn, self._subject_hash(ident[0]), ident[1])
            except sqlite3.Error as error:
                raise _unavailable("read", self.path, error) from error

    def key_classes(self, subject_id: str) -> list[str]:
        """The key classes the subject has a data key of, sorted."""
        subject = _check_subject(subject_id)
        with self._read_lock:
            conn = self._read_connection()
            try:
                rows = conn.execute(
                    "SELECT key_class FROM data_keys WHERE subject_id = ? ORDER BY key_class LIMIT ?",
                    (subject, KEY_CLASSES_PER_SUBJECT_MAX),
                ).fetchall()
            except sqlite3.Error as error:
                raise _unavailable("read", self.path, error) from error
        return [str(name) for (name,) in rows]

    @property
    def cached_keys(self) -> int:
        with self._cache_lock:
            return len(self._cache)

    @property
    def queued_keys(self) -> int:
        """New data keys waiting for the writer."""
        return self._writer.queued

    @property
    def queued_destructions(self) -> int:
        """Destructions waiting for the writer."""
        return self._writer.queued_solo

    def close(self) -> None:
        """Stops accepting writes, lets the writer finish those already accepted (waiting at
        most CLOSE_TIMEOUT_S; writes still queued then are refused), then closes the files."""
        if not self._writer.stop(CLOSE_TIMEOUT_S):
            log.error("key store writer did not stop within %.0f s (a stuck disk?)", CLOSE_TIMEOUT_S)
            self._writer.reject_queued(
                Unavailable(f"the key store {self.path.name} closed before this write ran; retry")
            )
        with self._read_lock:
            reader, self._reader = self._reader, None
            with self._cache_lock:
                self._cache.clear()
                # A miss still unwrapping what it read must not refill the cache of a closed keyring.
                self._generation += 1
            if reader is not None:
                reader.close()

    def __enter__(self) -> Keyring:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _cached(self, ident: tuple[str, str]) -> bytes | None:
        with self._cache_lock:
            key = self._cache.get(ident)
            if key is not None:
                self._cache.move_to_end(ident)
            return key

    def _remember(self, ident: tuple[str, str], key: bytes) -> None:
        """Call with _cache_lock held."""
        self._cache[ident] = key
        self._cache.move_to_end(ident)
        while len(self._cache) > self.cache_entries_max:
            self._cache.popitem(last=False)

    def _read_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            raise Unavailable(f"the key store {self.path.name} is closed")
        return self._reader

    # -- the writer thread ----------------------------------------------------------------------

    def _write(self, batch: list[_Write]) -> None:
        try:
            first = batch[0]
            if isinstance(first, _Destroy):
                self._destroy_now(first)
            else:
                self._create_now(cast("list[_Create]", batch))
        except Exception:
            raise  # the writer answers the batch with it (_reject) and goes on
        except BaseException as error:
            # The writer thread ends without answering this batch: its callers must not wait forever.
            _reject(batch, Unavailable(f"the key store writer stopped ({error!r}); retry"))
            raise

    def _create_now(self, batch: list[_Create]) -> None:
        # A key cached or in the file already (an earlier item of this batch, an earlier batch,
        # another process) is the key: never a second one for the same subject and class.
        pending: list[_Create] = []
        for item in batch:
            key = self._cached(item.ident)
            if key is None:
                pending.append(item)
            else:
                _answer(item.result, key)
        if not pending:
            return
        try:
            outcomes = self._insert_missing([item.ident for item in pending])
        except sqlite3.Error as error:
            raise _unavailable("read or write", self.path, error) from error
        results: list[bytes | Exception] = []
        for item, outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, Exception):
                results.append(outcome)
                continue
            created, wrapped = outcome
            if created is not None:
                results.append(created)
                continue
            try:
                results.append(self._unwrap(item.ident, wrapped))
            except DataCorruption as error:
                results.append(error)
        with self._cache_lock:
            for item, result in zip(pending, results, strict=True):
                if isinstance(result, bytes):
                    self._remember(item.ident, result)
        for item, result in zip(pending, results, strict=True):
            _answer(item.result, result)

    def _insert_missing(
        self, idents: list[tuple[str, str]]
    ) -> list[tuple[bytes | None, object] | FailedPrecondition]:
        """Per ident, in one transaction: (the key, its wrapped form) when created now, (None,
        the stored wrapped key) when it exists, or the error that refused it."""
        conn = self._write_connection()
        outcomes: list[tuple[bytes | None, object] | FailedPrecondition] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for ident in idents:
                stored = _select_wrapped(conn, ident)
                if stored is not None:
                    outcomes.append((None, stored))
                    continue
                if _was_destroyed(conn, self._subject_hash(ident[0]), ident[1]):
                    outcomes.append(
                        FailedPrecondition(
                            f"the subject's data key of class {ident[1]!r} was destroyed by an "
                            "erasure, and a destroyed key is never created again: this region "
                            "refuses the subject's records of that class"
                        )
                    )
                    continue
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM data_keys WHERE subject_id = ?", (ident[0],)
                ).fetchone()
                if count >= KEY_CLASSES_PER_SUBJECT_MAX:
                    outcomes.append(
                        FailedPrecondition(
                            f"the subject has data keys of {count} key classes, the most allowed; "
                            f"key class {ident[1]!r} would exceed {KEY_CLASSES_PER_SUBJECT_MAX}"
                        )
                    )
                    continue
                key = secrets.token_bytes(KEY_BYTES)
                nonce = secrets.token_bytes(NONCE_BYTES)
                wrapped = nonce + self._kek.encrypt(nonce, key, _wrap_aad(ident))
                conn.execute(
                    "INSERT INTO data_keys (subject_id, key_class, wrapped) VALUES (?, ?, ?)",
                    (ident[0], ident[1], wrapped),
                )
                outcomes.append((key, wrapped))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.batches_committed += 1
        self.keys_created += sum(
            isinstance(outcome, tuple) and outcome[0] is not None for outcome in outcomes
        )
        return outcomes

    def _destroy_now(self, item: _Destroy) -> None:
        conn = self._write_connection()
        try:
            destroyed = _delete(conn, item.subject, self._subject_hash(item.subject), item.classes)
        except sqlite3.Error as error:
            raise _unavailable("delete keys from", self.path, error) from error
        with self._cache_lock:
            for ident in [i for i in self._cache if i[0] == item.subject]:
                if item.classes is None or ident[1] in item.classes:
                    del self._cache[ident]
            # After the delete committed: a miss that read the key before it must not cache it.
            self._generation += 1
        self._clear_journal(conn)
        _answer(item.result, destroyed)

    def _subject_hash(self, subject: str) -> bytes:
        return hmac.new(self._marker_key, subject.encode("utf-8"), hashlib.sha256).digest()

    def _write_connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable(f"the key store {self.path.name} is closed")
        return self._conn

    def _close_write_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _unwrap(self, ident: tuple[str, str], wrapped: object) -> bytes:
        if not isinstance(wrapped, bytes) or len(wrapped) != WRAPPED_BYTES:
            raise DataCorruption(
                f"a data key of class {ident[1]!r} in {self.path.name} is damaged (not a "
                f"{WRAPPED_BYTES}-byte wrapped key); restore the key store from backup"
            )
        try:
            key = self._kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(ident))
        except InvalidTag:
            raise DataCorruption(
                f"a data key of class {ident[1]!r} in {self.path.name} cannot be unwrapped: the "
                f"key-encryption key ({KEK_FILE}) is not the one it was wrapped with, or the row is "
                "damaged; restore both from the same backup"
            ) from None
        return key

    def _clear_journal(self, conn: sqlite3.Connection) -> None:
        """Copies every page into the database and truncates the WAL to zero bytes: older page
        images in the WAL would otherwise still hold destroyed keys."""
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as error:
            raise _unavailable("clear the journal of", self.path, error) from error
        if busy:
            raise Unavailable(
                f"the keys are deleted but another connection to {self.path.name} kept its WAL from "
                "being cleared, so it may still hold them; call destroy again"
            )

    def _open(self) -> sqlite3.Connection:
        try:
            return sqlite_db.open_database(self.path, _PRAGMAS, self._schema(), label=self.path.name)
        except sqlite3.DatabaseError as error:
            raise FailedPrecondition(
                f"{self.path.name} is not a usable key store ({error}); restore it from backup"
            ) from error

    def _schema(self) -> sqlite_db.Schema:
        return sqlite_db.Schema(
            version=SCHEMA_VERSION,
            create=_create_schema,
            upgrades={1: _add_destroyed_keys},
            unsupported=lambda version: FailedPrecondition(
                f"{self.path.name} has key store schema version {version}; this node reads "
                f"version {SCHEMA_VERSION}"
            ),
        )


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)


def _add_destroyed_keys(conn: sqlite3.Connection) -> None:
    # A store from before the markers: keys destroyed then left none, so there is nothing to
    # mark; from now on every destruction does.
    conn.execute(_DESTROYED_KEYS_TABLE)


def _was_destroyed(conn: sqlite3.Connection, subject_hash: bytes, key_class: str) -> bool:
    rows = conn.execute(
        "SELECT 1 FROM destroyed_keys WHERE subject_hash = ? AND key_class IN (?, ?)",
        (subject_hash, key_class, ALL_CLASSES),
    ).fetchall()
    return bool(rows)


def _select_wrapped(conn: sqlite3.Connection, ident: tuple[str, str]) -> object | None:
    # fetchall finishes the statement: a read connection left inside a statement would hold a
    # snapshot that keeps destroy's checkpoint from truncating the WAL.
    rows = conn.execute(
        "SELECT wrapped FROM data_keys WHERE subject_id = ? AND key_class = ?", ident
    ).fetchall()
    return rows[0][0] if rows else None


def _delete(conn: sqlite3.Connection, subject: str, subject_hash: bytes, classes: list[str] | None) -> int:
    """Deletes the keys and marks them destroyed, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name in [ALL_CLASSES] if classes is None else classes:
            conn.execute(
                "INSERT OR IGNORE INTO destroyed_keys (subject_hash, key_class) VALUES (?, ?)",
                (subject_hash, name),
            )
        if classes is None:
            cursor = conn.execute("DELETE FROM data_keys WHERE subject_id = ?", (subject,))
            destroyed = cursor.rowcount
        else:
            destroyed = 0
            for name in classes:
                cursor = conn.execute(
                    "DELETE FROM data_keys WHERE subject_id = ? AND key_class = ?", (subject, name)
                )
                destroyed += cursor.rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return destroyed


def _wrap_aad(ident: tuple[str, str]) -> bytes:
    subject, key_class = (part.encode("utf-8") for part in ident)
    return b"".join(
        (
            _WRAP_AAD_PREFIX,
            struct.pack(">I", len(subject)),
            subject,
            struct.pack(">I", len(key_class)),
            key_class,
        )
    )


def _check_ident(subject_id: str, key_class: str) -> tuple[str, str]:
    return _check_subject(subject_id), _check_key_class(key_class)


def _check_subject(subject_id: str) -> str:
    size = _utf8_size(subject_id, "subject id")
    if not 1 <= size <= SUBJECT_ID_BYTES_MAX:
        raise InvalidArgument(
            f"subject id is {size} bytes; a data key belongs to a subject id of 1 to "
            f"{SUBJECT_ID_BYTES_MAX} bytes"
        )
    if "\x00" in subject_id:
        raise InvalidArgument("subject id contains a NUL character, which is not allowed")
    return subject_id


def _check_key_class(key_class: str) -> str:
    size = _utf8_size(key_class, "key class")
    if key_class == ALL_CLASSES:
        raise InvalidArgument(f"key class {ALL_CLASSES!r} is reserved (it marks every class destroyed)")
    if not 1 <= size <= KEY_CLASS_BYTES_MAX or not key_class.isprintable():
        raise InvalidArgument(
            f"invalid key class {key_class!r}: use 1 to {KEY_CLASS_BYTES_MAX} bytes of printable text "
            "(the retention class name)"
        )
    return key_class


def _utf8_size(text: str, what: str) -> int:
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be text, not {type(text).__name__}")
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid UTF-8 text (it holds a lone surrogate)") from None


def _unavailable(action: str, path: Path, error: sqlite3.Error) -> Unavailable:
    return Unavailable(f"cannot {action} the key store {path.name} ({error}); retry")
