"""The region's data keys: one per (subject, key class), wrapped by the region's key-encryption
key (KEK) and kept in their own SQLite file, never in the record store.

Crypto-shredding rests on one property: once destroy() returns, the wrapped key is in no file
of the key store, so every copy of the records sealed under it (old database files, backups,
replicas' disks) is unreadable. Three things give that property:
- `secure_delete` overwrites deleted rows (and pages freed or rebuilt around them) with zeros;
- the WAL, which may still hold older images of those pages, is checkpointed into the database
  and truncated to zero bytes before destroy() returns;
- the rows live in a WITHOUT ROWID table, so the key is stored once (no separate index copy).

One connection, guarded by a lock, serves every thread; unwrapped keys are kept in a bounded
LRU cache so that reads on the event loop rarely touch the file. Writes run on the caller's
thread under that lock, not on a writer thread (domicile.single_writer): they are rare (a new
subject and key class, an erasure), each must be durable before its caller goes on, and each
must change the cache under the same lock as the file, or a key created just before its
destruction could stay cached after it.
"""

from __future__ import annotations

import collections
import secrets
import sqlite3
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domicile import sqlite_db
from domicile.errors import DataCorruption, FailedPrecondition, InvalidArgument, Unavailable
from domicile.subjects import SUBJECT_ID_BYTES_MAX
from node.keyfiles import ensure_private_file, read_or_create

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
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
_PRAGMAS = sqlite_db.Pragmas(synchronous="FULL", busy_timeout_ms=BUSY_TIMEOUT_MS, secure_delete=True)

# Domain separation: a wrapped data key is bound to its subject and class, so a row copied to
# another subject does not unwrap.
_WRAP_AAD_PREFIX = b"domicile/data-key/v1\x00"

_SCHEMA = (
    "CREATE TABLE data_keys ("
    " subject_id TEXT NOT NULL, key_class TEXT NOT NULL, wrapped BLOB NOT NULL,"
    " PRIMARY KEY (subject_id, key_class)) WITHOUT ROWID",
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


class Keyring:
    """Data keys of one region. Thread-safe; close() it when the node stops."""

    def __init__(self, path: Path, kek: bytes, *, cache_entries_max: int = 4096) -> None:
        if len(kek) != KEY_BYTES:
            raise InvalidArgument(f"the key-encryption key is {len(kek)} bytes; it must be {KEY_BYTES}")
        if not 1 <= cache_entries_max <= CACHE_ENTRIES_LIMIT:
            raise InvalidArgument(
                f"cache_entries_max is {cache_entries_max}; it must be 1..{CACHE_ENTRIES_LIMIT}"
            )
        self.path = Path(path)
        self.cache_entries_max = cache_entries_max
        self._kek = AESGCM(bytes(kek))
        # Lock order: _db_lock, then _cache_lock. Cache hits take only _cache_lock, so a reader
        # never waits for another thread's fsync.
        self._db_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite creates the WAL and shared-memory files with the database file's mode.
        ensure_private_file(self.path)
        self._conn: sqlite3.Connection | None = self._open()

    # -- keys -----------------------------------------------------------------------------------

    def data_key(self, subject_id: str, key_class: str, *, create: bool) -> bytes | None:
        """The subject's 32-byte data key for key_class. When there is none (never created, or
        destroyed): a new one, committed durably before it is returned, if `create`; else None.

        Creating commits with an fsync: call it with create=True off the event loop."""
        ident = _check_ident(subject_id, key_class)
        cached = self._cached(ident)
        if cached is not None:
            return cached
        with self._db_lock:
            # Another thread may have loaded or created it while this one waited for the lock.
            cached = self._cached(ident)
            if cached is not None:
                return cached
            conn = self._connection()
            try:
                wrapped = _select_wrapped(conn, ident)
                if wrapped is None:
                    if not create:
                        return None
                    wrapped = self._create(conn, ident)
            except sqlite3.Error as error:
                raise _unavailable("read or write", self.path, error) from error
            key = self._unwrap(ident, wrapped)
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
        with self._db_lock:
            conn = self._connection()
            try:
                destroyed = _delete(conn, subject, classes)
            except sqlite3.Error as error:
                raise _unavailable("delete keys from", self.path, error) from error
            with self._cache_lock:
                for ident in [i for i in self._cache if i[0] == subject]:
                    if classes is None or ident[1] in classes:
                        del self._cache[ident]
            self._clear_journal(conn)
        return destroyed

    def key_classes(self, subject_id: str) -> list[str]:
        """The key classes the subject has a data key of, sorted."""
        subject = _check_subject(subject_id)
        with self._db_lock:
            conn = self._connection()
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

    def close(self) -> None:
        with self._db_lock:
            conn, self._conn = self._conn, None
            with self._cache_lock:
                self._cache.clear()
            if conn is not None:
                conn.close()

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
        with self._cache_lock:
            self._cache[ident] = key
            self._cache.move_to_end(ident)
            while len(self._cache) > self.cache_entries_max:
                self._cache.popitem(last=False)

    def _create(self, conn: sqlite3.Connection, ident: tuple[str, str]) -> object:
        nonce = secrets.token_bytes(NONCE_BYTES)
        wrapped = nonce + self._kek.encrypt(nonce, secrets.token_bytes(KEY_BYTES), _wrap_aad(ident))
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process sharing the file may have created it since the caller looked.
            stored = _select_wrapped(conn, ident)
            if stored is None:
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM data_keys WHERE subject_id = ?", (ident[0],)
                ).fetchone()
                if count >= KEY_CLASSES_PER_SUBJECT_MAX:
                    raise FailedPrecondition(
                        f"the subject has data keys of {count} key classes, the most allowed; "
                        f"key class {ident[1]!r} would exceed {KEY_CLASSES_PER_SUBJECT_MAX}"
                    )
                conn.execute(
                    "INSERT INTO data_keys (subject_id, key_class, wrapped) VALUES (?, ?, ?)",
                    (ident[0], ident[1], wrapped),
                )
                stored = wrapped
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return stored

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

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable(f"the key store {self.path.name} is closed")
        return self._conn

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
            unsupported=lambda version: FailedPrecondition(
                f"{self.path.name} has key store schema version {version}; this node reads "
                f"version {SCHEMA_VERSION}"
            ),
        )


def _create_schema(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        conn.execute(statement)


def _select_wrapped(conn: sqlite3.Connection, ident: tuple[str, str]) -> object | None:
    row = conn.execute(
        "SELECT wrapped FROM data_keys WHERE subject_id = ? AND key_class = ?", ident
    ).fetchone()
    return None if row is None else row[0]


def _delete(conn: sqlite3.Connection, subject: str, classes: list[str] | None) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
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
