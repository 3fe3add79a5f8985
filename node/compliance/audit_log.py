"""The node's audit log: an append-only hash chain in its own SQLite file.

One writer thread (a domicile.single_writer.SingleWriter) owns the write connection and commits
whatever is queued in one durable transaction (group commit), so one fsync serves many audited
operations. After each batch it tells `on_grown` the log's new durable size (the node's head
exporter, which signs the head only when it sends one: at most a few a second, where a batch
comes every few milliseconds), or signs the new head and hands it to `on_head`; both are called
on the writer thread, so they must be quick and thread-safe. Then it tells the callers their
entries are durable. The event loop is woken only when someone waits:
a batch of entries carried by the store's commits has nobody to answer. Readers use their own
connections; WAL lets them read while the writer commits.

The log fails closed: when the queue is full, or the writer cannot write, record() refuses,
so that an operation that cannot be audited does not happen.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from domicile import single_writer, sqlite_db
from domicile.audit import (
    GENESIS,
    HASH_BYTES,
    SUBJECT_KEY_BYTES_MIN,
    AuditEntry,
    SignedHead,
    StoredEntry,
    VerifyReport,
    chain_hash,
    public_key_bytes,
    sign_head,
    subject_hash,
    verify_log,
)
from domicile.errors import (
    DataCorruption,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from domicile.hlc import wall_ms
from domicile.identity import audit_key
from domicile.model import check_node_id
from domicile.sqlite_checkpoint import WalCheckpointer
from node.keyfiles import read_or_create

log = logging.getLogger("domicile.audit")

SIGNING_KEY_FILE = audit_key.DATA_DIR_KEY_FILE
SUBJECT_KEY_FILE = "audit-subject.key"
SUBJECT_KEY_BYTES = 32

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
_PRAGMAS = sqlite_db.Pragmas(synchronous="FULL", busy_timeout_ms=BUSY_TIMEOUT_MS)
READ_ENTRIES_MAX = 10_000
ITER_PAGE_ENTRIES = 1000
READERS_IDLE_MAX = 4
# The longest a committed batch waits for a signed head to be offered while entries keep
# arriving behind it (each batch's head is otherwise left to the next, which covers it).
HEAD_OFFER_MAX_S = 0.25
CLOSE_TIMEOUT_S = 10.0
# How long the writer holds entries nobody waits on (those a store's commit carried, durable in
# its outbox already) open for more, so that the group commits of that time share one audit
# transaction and fsync: a sequential writer's every Put otherwise paid one of its own. A
# record() or a flush() ends the wait at once; heads and readers see carried entries this late.
CARRY_LINGER_S = 0.1
# The store's writer waits before a commit whose entries this log would carry while this many
# of queue_entries_max wait here (half: record() keeps the other half), at most
# CARRY_ROOM_WAIT_S; then the commit is refused. The carried entries are durable in the store
# already, but the copies queued here are memory, and a writer of the store that ran on ahead of
# a slow log (its own fsync, a stalled disk) would grow them without bound.
CARRY_ROOM_SHARE = 0.5
CARRY_ROOM_WAIT_S = 5.0
# Failed batches remembered for flush(); older ones were reported to their own callers.
FAILURES_REMEMBERED_MAX = 64

# audit_info row: the highest change-log position whose carried entry the log holds.
_CARRIED_THROUGH = "carried_through"
# audit_info row: the highest received number (a replicated apply's carried entry) the log holds.
_RECEIVED_THROUGH = "received_through"
# audit_info row: "seq:hash" of the last entry a check at start found sound.
_CHECKPOINT = "verified_through"

_SCHEMA = (
    "CREATE TABLE audit (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, hash BLOB NOT NULL)",
    # Who owns this file: a node must not continue another node's chain under its own name.
    "CREATE TABLE audit_info (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)


# -- keys -----------------------------------------------------------------------------------


def load_or_create_keys(data_dir: Path, region_dir: Path | None = None) -> tuple[Ed25519PrivateKey, bytes]:
    """The node's audit signing key (audit-signing.key, PEM PKCS8, in data_dir) and the
    subject-hash key (audit-subject.key, 32 random bytes, in region_dir: the daemons of a region
    that share one database hash subject ids alike, so one's erasure block is the other's),
    created on first use with mode 0600."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    shared = Path(region_dir) if region_dir is not None else directory
    shared.mkdir(parents=True, exist_ok=True)
    pem = read_or_create(
        directory / SIGNING_KEY_FILE,
        lambda: Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
    )
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise FailedPrecondition(
            f"{SIGNING_KEY_FILE} is not an unencrypted PEM PKCS8 private key ({error}); "
            "restore it from backup"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FailedPrecondition(
            f"{SIGNING_KEY_FILE} holds a {type(key).__name__}; the audit log signs with an Ed25519 key"
        )
    subject_key = read_or_create(shared / SUBJECT_KEY_FILE, lambda: secrets.token_bytes(SUBJECT_KEY_BYTES))
    if len(subject_key) != SUBJECT_KEY_BYTES:
        raise FailedPrecondition(
            f"{SUBJECT_KEY_FILE} is {len(subject_key)} bytes; it must be {SUBJECT_KEY_BYTES} random bytes"
        )
    return key, subject_key


# -- the log --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    index: int  # position in record() order, from 1; 0 for an entry handed over by carry()
    entry: AuditEntry  # seq 0: numbered by the writer
    future: asyncio.Future[int] | None
    # The change-log position of the write whose commit carried this entry (0: not carried).
    carried_lsn: int = 0
    # The received number of a replicated apply's entry its commit carried (0: not one).
    received_seq: int = 0


@dataclass(frozen=True)
class _Failure:
    first: int
    last: int
    error: Exception


def _consume(future: asyncio.Future[int]) -> None:
    # Read paths ignore their future; retrieving the error here keeps asyncio from logging it
    # again (the writer already logged the failed batch).
    if not future.cancelled():
        future.exception()


def _as_bytes(value: object) -> bytes:
    # A file edited by hand may hold TEXT or numbers; they must reach the verifier, not crash.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return str(value).encode("ascii")


class AuditLog:
    """The audit log of one node. start() it on the event loop, record() from that loop,
    read from any thread, close() when the node stops."""

    def __init__(
        self,
        path: Path,
        *,
        region: str,
        node_id: str,
        signing_key: Ed25519PrivateKey,
        subject_key: bytes,
        hlc: Callable[[], int],
        now_ms: Callable[[], int] = wall_ms,
        batch_entries_max: int = 1024,
        queue_entries_max: int = 65536,
        on_head: Callable[[SignedHead], None] | None = None,
        on_grown: Callable[[int], None] | None = None,
        carry_linger_s: float = CARRY_LINGER_S,
    ) -> None:
        if not region:
            raise InvalidArgument("region is empty; an audit log belongs to one region")
        check_node_id(node_id)
        if len(subject_key) < SUBJECT_KEY_BYTES_MIN:
            raise InvalidArgument(
                f"subject key is {len(subject_key)} bytes; it must be at least {SUBJECT_KEY_BYTES_MIN}"
            )
        for name, value in (
            ("batch_entries_max", batch_entries_max),
            ("queue_entries_max", queue_entries_max),
        ):
            if value < 1:
                raise InvalidArgument(f"{name} is {value}; it must be at least 1")
        self.path = Path(path)
        if str(self.path) in ("", ":memory:"):
            raise InvalidArgument(f"audit log path {str(self.path)!r} is not a file path")
        self.region = region
        self.node_id = node_id
        self.batch_entries_max = batch_entries_max
        self.queue_entries_max = queue_entries_max
        self._signing_key = signing_key
        # Derived once: every head carries it, and deriving it per head cost a third of a signature.
        self._public_key = public_key_bytes(signing_key)
        self._subject_key = bytes(subject_key)
        self._hlc = hlc
        self._now_ms = now_ms
        self._on_head = on_head
        self._on_grown = on_grown

        self._writer: single_writer.SingleWriter[_Pending] = single_writer.SingleWriter(
            self._write,
            self._rejected,
            name="domicile-audit-writer",
            batch_max=batch_entries_max,
            queue_max=queue_entries_max,
            full_message=(
                f"audit queue is full ({queue_entries_max} entries waiting); the operation was "
                "not performed because it could not be audited; retry after a short back-off"
            ),
            refused=_refused,
            stopped=lambda failure: Unavailable(
                f"the audit log stopped before this entry was written ({failure or 'closed'}); "
                "the operation was not performed"
            ),
            on_exit=self._close_writer_connection,
            linger_s=carry_linger_s,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None
        # Checkpoints off the commit path (domicile.sqlite_checkpoint), from when the writer runs.
        self.checkpointer: WalCheckpointer | None = None

        # The highest change-log position whose carried entry the log holds (see carry()).
        # Written by the writer thread only, read by the store's writer.
        self._carried_through = 0
        # The same for the entries replicated applies carried (see carry_received()).
        self._received_through = 0
        # Entries handed over by carry() (written by the store's writer thread) and appended
        # (written by the writer thread): flush() waits for those handed before it.
        self._carried_handed = 0
        self._carried_appended = 0
        self._carry_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Guards _carried_appended and _carry_waiters together: the writer wakes the loop for
        # carried entries only when a flush() waits, so a waiter must not slip in unseen.
        self._carry_lock = threading.Lock()
        # Written by the writer thread only.
        self._next_seq = 1
        self._last_hash = GENESIS
        # A committed batch whose head was not offered yet (see _offer_head()).
        self._head_owed = False
        # When a head was last offered: under a steady load the queue may never be empty after
        # a batch, so a head is also offered once this is HEAD_OFFER_MAX_S old.
        self._head_offered_at = time.monotonic()
        self.batches_committed = 0
        self.entries_committed = 0

        # The durable end of the chain and its signed head, shared with readers of head().
        self._head_lock = threading.Lock()
        self._durable_size = 0
        self._durable_hash = GENESIS
        self._signed: SignedHead | None = None

        # Event-loop side: record() order, settled entries, flush() waiters.
        self._recorded = 0
        self._settled = 0
        self._flushed_through = 0
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._failures: collections.deque[_Failure] = collections.deque(maxlen=FAILURES_REMEMBERED_MAX)

        self._readers_lock = threading.Lock()
        self._idle_readers: list[sqlite3.Connection] = []
        self._readers_closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(
        self,
        carried: Callable[[int], list[tuple[int, bytes]]] | None = None,
        store_last_lsn: int | None = None,
        received: Callable[[int], list[tuple[int, bytes]]] | None = None,
        store_last_received: int | None = None,
    ) -> None:
        """Opens the file, resumes the chain from its last entry and starts the writer thread.
        `carried(after_lsn)` gives the entries the store's commits carried for positions after
        `after_lsn` (node.engine: the audit outbox); those this file does not hold yet (a crash
        came between the store's commit and this log's) are appended first, in order.
        `store_last_lsn` is the store's last position: a store behind the position this log
        holds (rebuilt from a backup) will number its writes again from there, so the position
        moves back to it (the rebuilt store carries no entry of its own yet). `received` and
        `store_last_received` are the same for the entries of replicated applies, by received
        number (carry_received())."""
        state = self._writer.state
        if state != single_writer.NEW:
            raise Unavailable(f"the audit log is {state}; create a new AuditLog to start again")
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        conn = sqlite_db.open_database(self.path, _PRAGMAS, self._schema(), label=self.path.name)
        try:
            self._check_owner(conn)
            size, last_hash = _tail(conn)
            through = _carried_through(conn)
            received_through = _carried_through(conn, _RECEIVED_THROUGH)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._next_seq = size + 1
        self._last_hash = last_hash
        if store_last_lsn is not None and through > store_last_lsn:
            log.warning(
                "audit log %s holds carried entries through position %d but the store ends at %d "
                "(rebuilt?): positions after %d are the store's again",
                self.path.name,
                through,
                store_last_lsn,
                store_last_lsn,
            )
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO audit_info (name, value) VALUES (?, ?)",
                    (_CARRIED_THROUGH, str(store_last_lsn)),
                )
            through = store_last_lsn
        if store_last_received is not None and received_through > store_last_received:
            log.warning(
                "audit log %s holds received entries through number %d but the store ends at %d "
                "(rebuilt?): numbers after %d are the store's again",
                self.path.name,
                received_through,
                store_last_received,
                store_last_received,
            )
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO audit_info (name, value) VALUES (?, ?)",
                    (_RECEIVED_THROUGH, str(store_last_received)),
                )
            received_through = store_last_received
        self._carried_through = through
        self._received_through = received_through
        if carried is not None or received is not None:
            try:
                if carried is not None:
                    self._recover_carried(carried(through))
                if received is not None:
                    self._recover_received(received(received_through))
            except BaseException:
                self._conn = None
                conn.close()
                raise
            size, last_hash = self._next_seq - 1, self._last_hash
            self._carried_appended = 0  # counts only what carry() hands over from here on
        with self._head_lock:
            self._durable_size, self._durable_hash = size, last_hash
        self.checkpointer = WalCheckpointer.beside(self.path, _PRAGMAS)
        self._writer.start()
        log.info("audit log %s resumed at entry %d", self.path.name, size)

    async def close(self) -> None:
        """Stops accepting, commits what is queued and stops the writer (waiting at most
        CLOSE_TIMEOUT_S; entries still queued then are failed)."""
        state = self._writer.state
        self._writer.stop_accepting()
        if state in (single_writer.NEW, single_writer.CLOSED):
            self._close_readers()
            return
        if not await asyncio.to_thread(self._writer.stop, CLOSE_TIMEOUT_S):
            log.error("audit writer did not stop within %.0f s (a stuck disk?)", CLOSE_TIMEOUT_S)
            self._writer.reject_queued(
                Unavailable(
                    "the audit log closed before this entry was written; the operation was not performed"
                )
            )
        self._close_readers()
        self._fail_carry_waiters(Unavailable("the audit log closed before every entry was written"))
        for _, waiter in self._flush_waiters:
            if not waiter.done():
                waiter.set_exception(Unavailable("the audit log closed before every entry was written"))
        self._flush_waiters.clear()

    def _fail_carry_waiters(self, error: Exception) -> None:
        with self._carry_lock:
            waiters, self._carry_waiters = self._carry_waiters, []
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    def _recover_carried(self, rows: list[tuple[int, bytes]]) -> None:
        """Appends carried entries the file lacks, on the starting thread, before the writer runs."""
        pending: list[_Pending] = []
        for lsn, body in sorted(rows):
            if lsn <= self._carried_through:
                continue
            pending.append(_Pending(0, AuditEntry.decode_unnumbered(body), None, lsn))
        if not pending:
            return
        self._commit(pending)
        log.warning(
            "audit log %s appended %d entries its store's commits carried (positions %d..%d)",
            self.path.name,
            len(pending),
            pending[0].carried_lsn,
            pending[-1].carried_lsn,
        )

    def _recover_received(self, rows: list[tuple[int, bytes]]) -> None:
        """Appends the entries of replicated applies the file lacks, like _recover_carried."""
        pending = [
            _Pending(0, AuditEntry.decode_unnumbered(body), None, received_seq=seq)
            for seq, body in sorted(rows)
            if seq > self._received_through
        ]
        if not pending:
            return
        self._commit(pending)
        log.warning(
            "audit log %s appended %d entries its store's replicated applies carried (numbers %d..%d)",
            self.path.name,
            len(pending),
            pending[0].received_seq,
            pending[-1].received_seq,
        )

    # -- writing --------------------------------------------------------------------------------

    def entry(
        self,
        *,
        principal: str,
        action: str,
        namespace: str = "",
        key: str = "",
        subject_id: str = "",
        decision: str = "",
        rule: str = "",
        policy_version: str = "",
        detail: str = "",
    ) -> AuditEntry:
        """An entry not yet numbered, for a store commit to carry (see carry()). Raises
        Unavailable when the log cannot write: what the trail cannot record does not happen."""
        state = self._writer.state
        if state != single_writer.RUNNING:
            raise _refused(state, self._writer.failure)
        return self._unnumbered(
            principal, action, namespace, key, subject_id, decision, rule, policy_version, detail
        )

    def _unnumbered(
        self,
        principal: str,
        action: str,
        namespace: str,
        key: str,
        subject_id: str,
        decision: str,
        rule: str,
        policy_version: str,
        detail: str,
    ) -> AuditEntry:
        """An entry stamped now, its subject as a keyed hash; the writer numbers it."""
        return AuditEntry(
            seq=0,
            time_ms=self._now_ms(),
            hlc=self._hlc(),
            region=self.region,
            node_id=self.node_id,
            principal=principal,
            action=action,
            namespace=namespace,
            key=key,
            subject=subject_hash(self._subject_key, subject_id),
            decision=decision,
            rule=rule,
            policy_version=policy_version,
            detail=detail,
        )

    def carry(self, carried: list[tuple[int, AuditEntry]], direct: list[AuditEntry]) -> None:
        """Takes the entries of a committed batch of local writes, from the store's writer
        thread, in commit order. `carried` are (change-log position, entry) of the writes whose
        commit carried their entry in the store (node.engine audit outbox): the write is
        durable with its entry, and the log appends them here and remembers the highest
        position it holds, in the same transaction, so that a start after a crash appends only
        what it lacks. `direct` are entries of writes that did not commit (refused at commit,
        or answered as a retry): a true record of the decision, appended here only.
        Never refused for a full queue: the store's writer waits for room before such a commit
        (wait_carry_room)."""
        pending = [_Pending(0, entry, None, lsn) for lsn, entry in carried]
        pending.extend(_Pending(0, entry, None) for entry in direct)
        # One queue operation for the group commit's entries, not one per entry. Carried
        # entries are durable in the store already, so they may linger for the next ones; a
        # direct entry is held nowhere else and is written at once.
        self._writer.put_many(pending, bounded=False, urgent=bool(direct))
        self._carried_handed += len(pending)

    def wait_carry_room(self, timeout_s: float = CARRY_ROOM_WAIT_S) -> None:
        """Blocks (on the store's writer thread, before a commit that carries entries) while
        the entries queued here are at CARRY_ROOM_SHARE of queue_entries_max; raises
        Unavailable when they stay there for timeout_s: the commit is then not made."""
        below = max(1, int(self.queue_entries_max * CARRY_ROOM_SHARE))
        if not self._writer.wait_room(below, timeout_s):
            raise Unavailable(
                f"the audit log has {self._writer.queued} entries waiting to be written (the store "
                f"waits below {below}) and made no room within {timeout_s:g} s; the write was not "
                "made, retry after a back-off"
            )

    def carry_received(self, received: Sequence[tuple[int, AuditEntry]]) -> None:
        """Takes the entries of a committed replicated apply, from the store's writer thread, in
        commit order: (received number, entry) of the entries its commit carried (node.engine
        audit_received). As carry(): the apply is durable with its entries, the log appends them
        and remembers the highest number it holds in the same transaction."""
        pending = [_Pending(0, entry, None, received_seq=seq) for seq, entry in received]
        self._writer.put_many(pending, bounded=False, urgent=False)
        self._carried_handed += len(pending)

    @property
    def received_through(self) -> int:
        """The highest received number whose entry this log holds durably."""
        return self._received_through

    @property
    def carried_through(self) -> int:
        """The highest change-log position whose carried entry this log holds durably."""
        return self._carried_through

    def record(
        self,
        *,
        principal: str,
        action: str,
        namespace: str = "",
        key: str = "",
        subject_id: str = "",
        decision: str = "",
        rule: str = "",
        policy_version: str = "",
        detail: str = "",
        urgent: bool = True,
    ) -> asyncio.Future[int]:
        """Queues one entry; the future gives its seq once it is durable. Raises
        ResourceExhausted when queue_entries_max entries wait (nothing is queued then).
        `urgent=False` for an entry nobody waits for (a replication send's, which the send does
        not wait on): it may then linger with carried entries (CARRY_LINGER_S) instead of
        making the writer commit it at once; a flush() still ends the linger."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("AuditLog.record() must be called on the event loop that started the log")
        entry = self._unnumbered(
            principal, action, namespace, key, subject_id, decision, rule, policy_version, detail
        )
        future: asyncio.Future[int] = loop.create_future()
        future.add_done_callback(_consume)
        index = self._recorded + 1
        self._writer.put(_Pending(index, entry, future), urgent=urgent)
        self._recorded = index
        return future

    async def flush(self) -> None:
        """Waits until every entry recorded so far, and every entry handed over by carry()
        so far, is durable here. Raises Unavailable when one of them (not reported by an
        earlier flush) could not be written."""
        carried = self._carried_handed
        carry_waiter: asyncio.Future[None] | None = None
        with self._carry_lock:
            if self._carried_appended < carried:
                if self._writer.state != single_writer.RUNNING:
                    raise _refused(self._writer.state, self._writer.failure)
                carry_waiter = asyncio.get_running_loop().create_future()
                self._carry_waiters.append((carried, carry_waiter))
        if carry_waiter is not None:
            self._writer.hurry()  # the carried entries may be lingering: this caller waits for them
            await carry_waiter
        target = self._recorded
        if self._settled < target:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._flush_waiters.append((target, waiter))
            self._writer.hurry()  # an entry recorded with urgent=False may be lingering
            await waiter
        since = self._flushed_through
        self._flushed_through = max(since, target)
        for failure in self._failures:
            if failure.last > since and failure.first <= target:
                raise failure.error

    @property
    def queued_entries(self) -> int:
        return self._writer.queued

    def _write(self, batch: list[_Pending]) -> None:
        # Anything that escapes _commit stops the writer: the log cannot vouch for its file any
        # more. The writer answers this batch with the error, and the entries queued after it
        # with the reason it stopped.
        try:
            self._commit(batch)
        except BaseException as error:
            log.exception("audit writer stopped")
            self._writer.fail(f"the writer stopped: {error}")
            raise

    def _close_writer_connection(self) -> None:
        # The checkpointer first: the write connection closes last, and SQLite removes the WAL.
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self._conn is not None:
            self._conn.close()

    def _commit(self, batch: list[_Pending]) -> None:
        conn = self._conn
        if conn is None:
            raise Unavailable("the audit log is not open")
        first = self._next_seq
        prev = self._last_hash
        rows: list[tuple[int, bytes, bytes]] = []
        for offset, pending in enumerate(batch):
            body = pending.entry.encode(seq=first + offset)
            prev = chain_hash(prev, body)
            rows.append((first + offset, body, prev))
        carried_through = max((p.carried_lsn for p in batch), default=0)
        received_through = max((p.received_seq for p in batch), default=0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO audit (seq, body, hash) VALUES (?, ?, ?)", rows)
            if carried_through > self._carried_through:
                conn.execute(
                    "INSERT OR REPLACE INTO audit_info (name, value) VALUES (?, ?)",
                    (_CARRIED_THROUGH, str(carried_through)),
                )
            if received_through > self._received_through:
                conn.execute(
                    "INSERT OR REPLACE INTO audit_info (name, value) VALUES (?, ?)",
                    (_RECEIVED_THROUGH, str(received_through)),
                )
            conn.execute("COMMIT")
            if self.checkpointer is not None:
                self.checkpointer.committed(conn.total_changes)
        except sqlite3.Error as error:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            log.error("audit batch of %d entries from seq %d failed: %s", len(batch), first, error)
            if carried_through or received_through:
                # Carried entries are durable in the store, not lost; but a later batch would
                # move the position past them. Stop: the next start appends them from the store.
                if self._loop is not None:
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(
                            self._fail_carry_waiters,
                            Unavailable(f"the audit log could not append carried entries ({error})"),
                        )
                self._offer_head()  # the entries before this batch are signed all the same
                raise Unavailable(f"the audit log could not append carried entries ({error})") from error
            failure = Unavailable(
                f"the audit log could not write ({error}); the operation was not performed; retry"
            )
            # The file is the truth: continue from whatever it holds now, or stop (failed before
            # the callers hear of it, so that the next record() already refuses).
            try:
                size, last_hash = _tail(conn)
            except BaseException as tail_error:
                self._writer.fail(f"the file cannot be read back after a failed write: {tail_error}")
                raise failure from tail_error
            self._next_seq, self._last_hash = size + 1, last_hash
            with self._head_lock:
                self._durable_size, self._durable_hash = size, last_hash
            self._offer_head()
            self._deliver(batch, first, failure)
            return
        size = first + len(batch) - 1
        self._next_seq, self._last_hash = size + 1, prev
        self._carried_through = max(self._carried_through, carried_through)
        self._received_through = max(self._received_through, received_through)
        self.batches_committed += 1
        self.entries_committed += len(batch)
        with self._head_lock:
            self._durable_size, self._durable_hash = size, prev
        # Not while start() appends carried entries: the head is offered once the log runs.
        # While entries wait, the next batch follows at once and its head covers this one's:
        # several group commits' entries then share one signature (and the exporter sends
        # only the newest head anyway). The head is owed until then, even if that batch fails.
        self._head_owed = True
        if self._writer.queued == 0 or time.monotonic() - self._head_offered_at >= HEAD_OFFER_MAX_S:
            self._offer_head()
        with self._carry_lock:
            self._carried_appended += sum(1 for p in batch if not p.index)
        self._deliver(batch, first, None)

    def _offer_head(self) -> None:
        """Tells on_grown the durable size, and signs the durable head for on_head, when a
        committed batch is not yet covered by an offer (not while start() appends carried
        entries: the head is offered once the log runs)."""
        listening = self._on_head is not None or self._on_grown is not None
        if not self._head_owed or not listening or self._writer.state != single_writer.RUNNING:
            return
        self._head_owed = False
        self._head_offered_at = time.monotonic()
        if self._on_grown is not None:
            with self._head_lock:
                size = self._durable_size
            try:
                self._on_grown(size)
            except Exception:
                log.exception("on_grown failed for audit log size %d", size)
        if self._on_head is not None:
            head = self.head()
            try:
                self._on_head(head)
            except Exception:
                log.exception("on_head failed for audit head of size %d", head.size)

    def _rejected(self, batch: list[_Pending], error: Exception) -> None:
        """The writer answers a batch with an error only as it stops (failed or closed): the
        entries carried by later commits will not be appended by this writer either, so a
        flush() waiting for them is failed now rather than left waiting for ever. The next
        start appends them from the store."""
        loop = self._loop
        if loop is not None:
            # The reason the writer gives, as a refusal: never the raw error of a disk or a bug.
            refusal = _refused(self._writer.state, self._writer.failure)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fail_carry_waiters, refusal)
        self._deliver(batch, 0, error)

    def _deliver(self, batch: list[_Pending], first: int, error: Exception | None) -> None:
        loop = self._loop
        if loop is None:
            return
        # Wake the loop only for someone waiting: a caller of record() (and its flush()), or a
        # flush() waiting for carried entries. A batch of carried entries alone (the common
        # case: a group commit's writes) has nobody to answer.
        with self._carry_lock:
            carry_waiting = bool(self._carry_waiters)
        if not carry_waiting and not any(p.index for p in batch):
            return
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._settle, batch, first, error)

    def _settle(self, batch: list[_Pending], first: int, error: Exception | None) -> None:
        for offset, pending in enumerate(batch):
            if pending.future is None or pending.future.done():
                continue  # carried, or the caller gave up waiting; the entry is written all the same
            if error is None:
                pending.future.set_result(first + offset)
            else:
                pending.future.set_exception(error)
        with self._carry_lock:
            appended = self._carried_appended
            ready = [waiter for count, waiter in self._carry_waiters if count <= appended]
            self._carry_waiters = [(c, w) for c, w in self._carry_waiters if c > appended]
        for waiter in ready:
            if not waiter.done():
                waiter.set_result(None)
        indexes = [p.index for p in batch if p.index]
        if not indexes:
            return
        if error is not None:
            self._failures.append(_Failure(min(indexes), max(indexes), error))
        self._settled = max(self._settled, max(indexes))
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._flush_waiters:
            if target <= self._settled:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._flush_waiters = still

    # -- reading --------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Entries durably written (the seq of the last one)."""
        with self._head_lock:
            return self._durable_size

    def head(self) -> SignedHead:
        """The signed head of the durable log; signed once per size."""
        if self._writer.state == single_writer.NEW:
            raise Unavailable("the audit log is not started; its head is not known yet")
        with self._head_lock:
            signed = self._signed
            if signed is None or signed.size != self._durable_size or signed.head != self._durable_hash:
                signed = sign_head(
                    self._signing_key,
                    region=self.region,
                    node_id=self.node_id,
                    size=self._durable_size,
                    head=self._durable_hash,
                    time_ms=self._now_ms(),
                    public_key=self._public_key,
                )
                self._signed = signed
            return signed

    def read(self, after_seq: int, limit: int) -> list[StoredEntry]:
        """Up to `limit` stored entries with seq > after_seq, in seq order."""
        if after_seq < 0:
            raise InvalidArgument(f"after_seq is {after_seq}; it must be 0 or a seq of the log")
        if not 1 <= limit <= READ_ENTRIES_MAX:
            raise InvalidArgument(f"limit is {limit}; it must be 1..{READ_ENTRIES_MAX}")
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT seq, body, hash FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
        return [StoredEntry(int(seq), _as_bytes(body), _as_bytes(h)) for seq, body, h in rows]

    def hash_at(self, seq: int) -> bytes:
        """The chain hash of entry `seq` (b"" when the log holds no such entry): the proof, sent
        with a head, that the log extends the head the coordinator holds (node.compliance.head_export)."""
        with self._reader() as conn:
            row = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
        return b"" if row is None else _as_bytes(row[0])

    def iter_all(self, after: int = 0) -> Iterator[StoredEntry]:
        """Every stored entry (after seq `after`) in seq order, page by page (the log may not
        fit in memory); stops at the last entry that existed when iteration began."""
        with self._reader() as conn:
            (last,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()
        while after < last:
            page = self.read(after, ITER_PAGE_ENTRIES)
            if not page:
                return
            for entry in page:
                if entry.seq > last:
                    return
                yield entry
            after = page[-1].seq

    def verify_local(self) -> VerifyReport:
        """Checks the whole file's chain (no head: damage inside the log, not a rewrite)."""
        return verify_log(self.iter_all(), None)

    def verify_since_checkpoint(self) -> tuple[VerifyReport, int]:
        """The check at start, bounded by what was added since the last one: checks the chain
        after the last entry an earlier check found sound (the checkpoint, in audit_info), as
        long as that entry still has the hash it had; otherwise the whole file. When sound, the
        checkpoint moves to the last entry checked. Returns the report and the seq it started
        after (0: the whole file). Damage before the checkpoint is the full verifier's to find
        (`domicile audit verify`, against the head the coordinator holds)."""
        start = self._checkpoint()
        if start is not None:
            found = self.read(start[0] - 1, 1) if start[0] >= 1 else []
            if not found or found[0].seq != start[0] or found[0].hash != start[1]:
                log.warning(
                    "audit checkpoint at entry %d no longer matches: checking the whole log", start[0]
                )
                start = None
        last: list[StoredEntry] = []

        def remembered(entries: Iterator[StoredEntry]) -> Iterator[StoredEntry]:
            for entry in entries:
                last[:] = [entry]
                yield entry

        after = start[0] if start is not None else 0
        report = verify_log(remembered(self.iter_all(after)), None, resume_from=start)
        if report.ok and last:
            self._store_checkpoint(last[0].seq, last[0].hash)
        return report, after

    def _checkpoint(self) -> tuple[int, bytes] | None:
        with self._reader() as conn:
            row = conn.execute("SELECT value FROM audit_info WHERE name = ?", (_CHECKPOINT,)).fetchone()
        if row is None:
            return None
        seq_text, _, hash_hex = str(row[0]).partition(":")
        try:
            seq, checked_hash = int(seq_text), bytes.fromhex(hash_hex)
        except ValueError:
            return None  # not ours to trust: the whole file is checked
        return (seq, checked_hash) if seq >= 1 and len(checked_hash) == HASH_BYTES else None

    def _store_checkpoint(self, seq: int, checked_hash: bytes) -> None:
        # Its own connection: the writer thread owns the other; WAL and the busy timeout let
        # this one wait for a commit in progress.
        conn = sqlite_db.connect(self.path, _PRAGMAS, label=self.path.name)
        try:
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO audit_info (name, value) VALUES (?, ?)",
                    (_CHECKPOINT, f"{seq}:{checked_hash.hex()}"),
                )
        finally:
            conn.close()

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        with self._readers_lock:
            if self._readers_closed or self._writer.state == single_writer.NEW:
                state = "not started" if self._writer.state == single_writer.NEW else "closed"
                raise Unavailable(f"the audit log is {state}; open it to read")
            conn = self._idle_readers.pop() if self._idle_readers else None
        if conn is None:
            conn = sqlite_db.connect(self.path, _PRAGMAS, label=self.path.name, query_only=True)
        try:
            yield conn
        finally:
            with self._readers_lock:
                keep = not self._readers_closed and len(self._idle_readers) < READERS_IDLE_MAX
                if keep:
                    self._idle_readers.append(conn)
            if not keep:
                conn.close()

    def _close_readers(self) -> None:
        with self._readers_lock:
            self._readers_closed = True
            idle, self._idle_readers = self._idle_readers, []
        for conn in idle:
            conn.close()

    # -- file -----------------------------------------------------------------------------------

    def _schema(self) -> sqlite_db.Schema:
        return sqlite_db.Schema(
            version=SCHEMA_VERSION,
            create=self._create_schema,
            unsupported=lambda version: FailedPrecondition(
                f"{self.path.name} has audit schema version {version}; this node reads version "
                f"{SCHEMA_VERSION}"
            ),
        )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO audit_info (name, value) VALUES (?, ?)",
            [("region", self.region), ("node_id", self.node_id)],
        )

    def _check_owner(self, conn: sqlite3.Connection) -> None:
        info = dict(conn.execute("SELECT name, value FROM audit_info").fetchall())
        for name, mine in (("region", self.region), ("node_id", self.node_id)):
            if info.get(name) != mine:
                raise FailedPrecondition(
                    f"{self.path.name} is the audit log of {name} {info.get(name)!r}, not {mine!r}; "
                    "a node continues only its own audit log"
                )


def _refused(state: str, failure: str) -> Unavailable:
    if state == single_writer.FAILED:
        return Unavailable(f"the audit log cannot write ({failure}); the operation was not performed")
    shown = "not started" if state == single_writer.NEW else "stopped"
    return Unavailable(f"the audit log is {shown}; the operation was not performed")


def _carried_through(conn: sqlite3.Connection, name: str = _CARRIED_THROUGH) -> int:
    row = conn.execute("SELECT value FROM audit_info WHERE name = ?", (name,)).fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except ValueError:
        raise DataCorruption(f"audit_info {name} is {row[0]!r}, not a position") from None


def _tail(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """The seq and hash of the last stored entry ((0, GENESIS) when the log is empty)."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return 0, GENESIS
    seq, last_hash = int(row[0]), _as_bytes(row[1])
    if len(last_hash) != HASH_BYTES:
        raise DataCorruption(
            f"the last audit entry ({seq}) has a {len(last_hash)}-byte hash, not {HASH_BYTES}: the log "
            "cannot be continued; verify it and restore it from backup"
        )
    return seq, last_hash
