"""SQLite persistence of nodes, their health, the topology revision, data-subject requests and
legal holds.

Every revision bump is committed (synchronous=FULL) before it is published, so a revision a
node has seen is never reissued after a crash. Erasure orders and holds travel in the topology,
so a change of them is written in the same transaction as the revision that publishes it.
Last-heartbeat times are flushed in batches: losing a few seconds of them in a crash only delays
nothing (a restarted coordinator gives every node a fresh grace period anyway).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domicile import sqlite_db
from domicile.errors import DataCorruption, FailedPrecondition, Unavailable
from domicile.subjects import (
    RELEASES_CARRIED,
    ErasureOrder,
    HoldRelease,
    HoldScope,
    KeptRecord,
    LegalHold,
    RegionReceipt,
    RequestKind,
    RequestStatus,
    SubjectRequest,
)
from domicile.topology import NodeHealth, NodeInfo

# 2: data-subject requests, erasure receipts and legal holds. A coordinator that predates them
# would publish topologies without the erasures and holds in force, so it must refuse the data.
# 3: who asked: the verified identity of an erasure's requester and a hold's placer and releaser.
# 4: the incarnation of the node each audit head came from, and the heads of chains a later
# incarnation closed (coordinator/audit_heads.py).
# 5: the receipts of what regions erased at the release of a legal hold that kept records of an
# erased subject (erasure_release_receipts).
SCHEMA_VERSION = 5

# Every statement is idempotent: upgrading from version 1 runs them all, and only the tables
# version 1 lacked are created (in their current shape, so the step from 2 to 3 adds only the
# columns a table lacks).
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    address TEXT NOT NULL,
    metrics_address TEXT NOT NULL,
    health INTEGER NOT NULL,
    last_heartbeat_unix_ms INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS audit_heads (
    region TEXT PRIMARY KEY,
    head BLOB NOT NULL,
    accepted_unix_ms INTEGER NOT NULL,
    incarnation INTEGER NOT NULL DEFAULT 0
)""",
    # The last head of each audit chain a node's later incarnation closed: kept for good, the
    # proof of what that chain held.
    """CREATE TABLE IF NOT EXISTS audit_heads_closed (
    node_id TEXT NOT NULL,
    incarnation INTEGER NOT NULL,
    head BLOB NOT NULL,
    accepted_unix_ms INTEGER NOT NULL,
    closed_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (node_id, incarnation)
)""",
    """CREATE TABLE IF NOT EXISTS subject_requests (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    subject_id TEXT NOT NULL,
    subject_jurisdiction TEXT NOT NULL,
    reason TEXT NOT NULL,
    received_unix_ms INTEGER NOT NULL,
    due_unix_ms INTEGER NOT NULL,
    status INTEGER NOT NULL,
    regions_pending TEXT NOT NULL,
    completed_unix_ms INTEGER NOT NULL,
    records_exported INTEGER NOT NULL,
    requested_by TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX IF NOT EXISTS subject_requests_by_status ON subject_requests (status, seq)",
    """CREATE TABLE IF NOT EXISTS erasure_receipts (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    region TEXT NOT NULL,
    receipt TEXT NOT NULL,
    UNIQUE (request_id, region)
)""",
    # What a node erased of a request's subject at a hold's release: beside the erasure's own
    # receipts, one per node and hold (a report retried is kept once).
    """CREATE TABLE IF NOT EXISTS erasure_release_receipts (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    region TEXT NOT NULL,
    receipt TEXT NOT NULL,
    UNIQUE (request_id, node_id, hold_id)
)""",
    """CREATE TABLE IF NOT EXISTS legal_holds (
    seq INTEGER PRIMARY KEY,
    hold_id TEXT NOT NULL UNIQUE,
    scope INTEGER NOT NULL,
    subject_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    placed_unix_ms INTEGER NOT NULL,
    -- 0 while the hold is in force; released holds stay on record.
    released_unix_ms INTEGER NOT NULL,
    release_reason TEXT NOT NULL,
    placed_by TEXT NOT NULL DEFAULT '',
    released_by TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX IF NOT EXISTS legal_holds_by_release ON legal_holds (released_unix_ms, seq)",
)

# The coordinator keeps sqlite3's own busy timeout.
_PRAGMAS = sqlite_db.Pragmas(synchronous="FULL")


def _create_schema(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA:
        db.execute(statement)


# Columns version 3 added to tables that version 2 created without them.
_IDENTITY_COLUMNS = (
    ("subject_requests", "requested_by"),
    ("legal_holds", "placed_by"),
    ("legal_holds", "released_by"),
)


def _add_identity_columns(db: sqlite3.Connection) -> None:
    """Version 2 -> 3. Idempotent: a table created by this version has the columns already."""
    for table, column in _IDENTITY_COLUMNS:
        present = {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")


def _add_incarnations(db: sqlite3.Connection) -> None:
    """Version 3 -> 4. Idempotent: a store created by this version has them already."""
    present = {str(row[1]) for row in db.execute("PRAGMA table_info(audit_heads)")}
    if "incarnation" not in present:
        db.execute("ALTER TABLE audit_heads ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0")
    _create_schema(db)


def _refuse_version(version: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"coordinator data has schema version {version}; this coordinator supports up to "
        f"{SCHEMA_VERSION}; run a newer coordinator"
    )


_STORE_SCHEMA = sqlite_db.Schema(
    version=SCHEMA_VERSION,
    create=_create_schema,
    upgrades={1: _create_schema, 2: _add_identity_columns, 3: _add_incarnations, 4: _create_schema},
    unsupported=_refuse_version,
)

_REQUEST_COLUMNS = (
    "request_id, kind, subject_id, subject_jurisdiction, reason, received_unix_ms, due_unix_ms, "
    "status, regions_pending, completed_unix_ms, records_exported, requested_by"
)
_HOLD_COLUMNS = "hold_id, scope, subject_id, namespace, key, reason, placed_unix_ms, placed_by"


@dataclass(frozen=True)
class SubjectChanges:
    """Data-subject state to write in one transaction. A request is written whole; its receipts
    are append-only (a receipt on record is never replaced)."""

    requests: tuple[SubjectRequest, ...] = ()
    placed: tuple[LegalHold, ...] = ()
    released: tuple[HoldRelease, ...] = ()


@dataclass(frozen=True)
class StoredState:
    revision: int
    cluster_fingerprint: str
    nodes: tuple[NodeInfo, ...]
    # What the topology at `revision` carries besides nodes and the cluster config.
    erasures: tuple[ErasureOrder, ...] = ()
    holds: tuple[LegalHold, ...] = ()
    # The latest hold releases, newest first (RELEASES_CARRIED of them at most).
    released: tuple[HoldRelease, ...] = ()


class CoordinatorStore:
    """One coordinator per data directory, enforced with an exclusive lock file."""

    DB_NAME = "coordinator.sqlite3"
    LOCK_NAME = "LOCK"

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(data_dir / self.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise FailedPrecondition(
                f"data directory {data_dir} is in use by another coordinator; "
                "give each coordinator its own --data-dir"
            ) from None
        try:
            # The connection stays on the coordinator's thread (sqlite3's same-thread check), and a
            # file that cannot use WAL keeps working in its own journal mode.
            self._db = sqlite_db.open_database(
                data_dir / self.DB_NAME,
                _PRAGMAS,
                _STORE_SCHEMA,
                label=self.DB_NAME,
                require_wal=False,
                check_same_thread=True,
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def load(self) -> StoredState:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        try:
            revision = int(meta.get("revision", "0"))
        except ValueError:
            raise DataCorruption(
                f"stored topology revision {meta.get('revision')!r} is not a number"
            ) from None
        nodes = []
        for row in self._db.execute(
            "SELECT node_id, region, address, metrics_address, health, last_heartbeat_unix_ms "
            "FROM nodes ORDER BY node_id"
        ):
            node_id, region, address, metrics_address, health, last_ms = row
            try:
                parsed_health = NodeHealth(health)
            except ValueError:
                raise DataCorruption(f"stored node {node_id!r} has unknown health {health!r}") from None
            nodes.append(NodeInfo(node_id, region, address, metrics_address, parsed_health, last_ms))
        erasures = tuple(
            ErasureOrder(r.request_id, r.subject_id, r.received_ms, r.regions_pending, r.requested_by)
            for r in self.open_requests()
            if r.kind is RequestKind.ERASURE
        )
        return StoredState(
            revision,
            meta.get("cluster_fingerprint", ""),
            tuple(nodes),
            erasures,
            self.holds_in_force(),
            self.recent_releases(),
        )

    def commit(
        self,
        revision: int,
        nodes: Iterable[NodeInfo] = (),
        cluster_fingerprint: str | None = None,
        subjects: SubjectChanges | None = None,
    ) -> None:
        """Writes the new revision together with the nodes and subject state that changed,
        atomically."""
        with self._transaction():
            self._put_meta("revision", str(revision))
            if cluster_fingerprint is not None:
                self._put_meta("cluster_fingerprint", cluster_fingerprint)
            self._upsert(nodes)
            if subjects is not None:
                self._write_subjects(subjects)

    def save_subjects(self, changes: SubjectChanges) -> None:
        """Writes subject state that no topology carries (access requests), atomically."""
        with self._transaction():
            self._write_subjects(changes)

    # --- data-subject requests and legal holds ---------------------------------------------

    def open_requests(self) -> tuple[SubjectRequest, ...]:
        """Open requests, oldest first."""
        rows = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM subject_requests WHERE status = ? ORDER BY seq",
            (int(RequestStatus.OPEN),),
        ).fetchall()
        return self._requests(rows)

    def request(self, request_id: str) -> SubjectRequest | None:
        rows = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM subject_requests WHERE request_id = ?", (request_id,)
        ).fetchall()
        found = self._requests(rows)
        return found[0] if found else None

    def list_requests(self, open_only: bool, limit: int) -> tuple[SubjectRequest, ...]:
        """At most `limit` requests, newest (last received) first."""
        where = "WHERE status = ?" if open_only else ""
        params: tuple[int, ...] = (int(RequestStatus.OPEN), limit) if open_only else (limit,)
        rows = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM subject_requests {where} ORDER BY seq DESC LIMIT ?", params
        ).fetchall()
        return self._requests(rows)

    def erasure_subjects(self) -> list[tuple[str, str]]:
        """(request id, subject id) of every completed erasure request, oldest first: the
        permanent list of erased subjects nodes learn on registration (an open one reaches them
        as an order in the topology)."""
        rows = self._db.execute(
            "SELECT request_id, subject_id FROM subject_requests WHERE kind = ? AND status != ? ORDER BY seq",
            (int(RequestKind.ERASURE), int(RequestStatus.OPEN)),
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def erasure_subjects_after(self, after_request_id: str, limit: int) -> list[tuple[str, str]] | None:
        """Up to `limit` (request id, subject id) of the permanent list (erasure_subjects), from the
        entry after `after_request_id` ("" for the first); None when that request is not on the
        list."""
        after_seq = 0
        if after_request_id:
            row = self._db.execute(
                "SELECT seq FROM subject_requests WHERE request_id = ? AND kind = ? AND status != ?",
                (after_request_id, int(RequestKind.ERASURE), int(RequestStatus.OPEN)),
            ).fetchone()
            if row is None:
                return None
            after_seq = int(row[0])
        rows = self._db.execute(
            "SELECT request_id, subject_id FROM subject_requests "
            "WHERE seq > ? AND kind = ? AND status != ? ORDER BY seq LIMIT ?",
            (after_seq, int(RequestKind.ERASURE), int(RequestStatus.OPEN), limit),
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def erasure_subjects_count(self) -> int:
        """How many entries the permanent list has."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM subject_requests WHERE kind = ? AND status != ?",
            (int(RequestKind.ERASURE), int(RequestStatus.OPEN)),
        ).fetchone()
        return int(row[0])

    def remove_node(self, revision: int, node_id: str) -> None:
        """Deletes a node with the revision that no longer has it, atomically. Its incarnation
        epoch stays: a node id that comes back must still not bring an older store."""
        with self._transaction():
            self._put_meta("revision", str(revision))
            self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))

    def node_epoch(self, node_id: str) -> int:
        """The highest incarnation epoch node_id registered with; 0 if none."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"epoch:{node_id}",)).fetchone()
        return 0 if row is None else int(row[0])

    def save_node_epoch(self, node_id: str, epoch: int) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (f"epoch:{node_id}", str(epoch)),
            )

    def changes(self) -> int:
        """Rows changed through this store since it opened (a cheap "did anything change?")."""
        return int(self._db.total_changes)

    def copy_to(self, path: Path) -> None:
        """A consistent copy of the whole state in a new SQLite file (the online backup API)."""
        target = sqlite3.connect(path)
        try:
            self._db.backup(target)
        finally:
            target.close()

    def erased_subjects_key(self) -> bytes:
        """The key of the permanent erasure list's hashes, made on first use and kept with the
        rest of the state (so a restored coordinator hashes as before)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'erased_subjects_key'").fetchone()
        if row is not None:
            return bytes.fromhex(str(row[0]))
        key = secrets.token_bytes(32)
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('erased_subjects_key', ?)", (key.hex(),)
            )
        return self.erased_subjects_key()

    def request_id_taken(self, request_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM subject_requests WHERE request_id = ?", (request_id,))
        return row.fetchone() is not None

    def holds_in_force(self) -> tuple[LegalHold, ...]:
        """Holds not released, oldest first."""
        rows = self._db.execute(
            f"SELECT {_HOLD_COLUMNS} FROM legal_holds WHERE released_unix_ms = 0 ORDER BY seq"
        ).fetchall()
        return tuple(_hold(row) for row in rows)

    def hold_release(self, hold_id: str) -> HoldRelease | None:
        """How a hold was released; None when it is in force or was never placed."""
        row = self._db.execute(
            "SELECT released_unix_ms, release_reason, released_by FROM legal_holds "
            "WHERE hold_id = ? AND released_unix_ms != 0",
            (hold_id,),
        ).fetchone()
        return None if row is None else HoldRelease(hold_id, int(row[0]), str(row[1]), str(row[2]))

    def recent_releases(self, limit: int = RELEASES_CARRIED) -> tuple[HoldRelease, ...]:
        """The latest hold releases, newest first (the index on the release time serves it)."""
        rows = self._db.execute(
            "SELECT hold_id, released_unix_ms, release_reason, released_by FROM legal_holds "
            "WHERE released_unix_ms != 0 ORDER BY released_unix_ms DESC, seq DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return tuple(HoldRelease(str(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows)

    def hold_id_taken(self, hold_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM legal_holds WHERE hold_id = ?", (hold_id,))
        return row.fetchone() is not None

    def _requests(self, rows: Sequence[Any]) -> tuple[SubjectRequest, ...]:
        ids = [str(row[0]) for row in rows]
        receipts = self._receipts(ids, "erasure_receipts")
        released = self._receipts(ids, "erasure_release_receipts")
        return tuple(
            _request(row, receipts.get(str(row[0]), ()), released.get(str(row[0]), ())) for row in rows
        )

    def _receipts(self, request_ids: list[str], table: str) -> dict[str, tuple[RegionReceipt, ...]]:
        """The receipts in `table` (erasure_receipts or erasure_release_receipts) of each request,
        in the order they were reported."""
        found: dict[str, list[RegionReceipt]] = {}
        # Chunks keep each statement under SQLite's bound-parameter limit.
        for start in range(0, len(request_ids), 500):
            chunk = request_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for request_id, region, text in self._db.execute(
                f"SELECT request_id, region, receipt FROM {table} WHERE request_id IN ({marks}) ORDER BY seq",
                chunk,
            ):
                found.setdefault(str(request_id), []).append(_receipt_from_json(str(region), str(text)))
        return {k: tuple(v) for k, v in found.items()}

    def _write_subjects(self, changes: SubjectChanges) -> None:
        for r in changes.requests:
            self._db.execute(
                f"INSERT INTO subject_requests ({_REQUEST_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(request_id) DO UPDATE SET status = excluded.status, "
                "regions_pending = excluded.regions_pending, "
                "completed_unix_ms = excluded.completed_unix_ms, "
                "records_exported = excluded.records_exported",
                (
                    r.request_id,
                    int(r.kind),
                    r.subject_id,
                    r.subject_jurisdiction,
                    r.reason,
                    r.received_ms,
                    r.due_ms,
                    int(r.status),
                    json.dumps(list(r.regions_pending)),
                    r.completed_ms,
                    r.records_exported,
                    r.requested_by,
                ),
            )
            self._db.executemany(
                "INSERT INTO erasure_receipts (request_id, region, receipt) VALUES (?, ?, ?) "
                "ON CONFLICT(request_id, region) DO NOTHING",
                [(r.request_id, receipt.region, _receipt_to_json(receipt)) for receipt in r.receipts],
            )
            self._db.executemany(
                "INSERT INTO erasure_release_receipts (request_id, node_id, hold_id, region, receipt) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(request_id, node_id, hold_id) DO NOTHING",
                [
                    (r.request_id, x.node_id, x.released_hold_id, x.region, _receipt_to_json(x))
                    for x in r.release_receipts
                ],
            )
        self._db.executemany(
            f"INSERT INTO legal_holds ({_HOLD_COLUMNS}, released_unix_ms, release_reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, '')",
            [
                (
                    h.hold_id,
                    int(h.scope),
                    h.subject_id,
                    h.namespace,
                    h.key,
                    h.reason,
                    h.placed_ms,
                    h.placed_by,
                )
                for h in changes.placed
            ],
        )
        # 0 marks a hold in force, so a release stamped at the epoch (a test clock) counts as 1 ms.
        self._db.executemany(
            "UPDATE legal_holds SET released_unix_ms = ?, release_reason = ?, released_by = ? "
            "WHERE hold_id = ?",
            [(max(1, r.released_ms), r.reason, r.released_by, r.hold_id) for r in changes.released],
        )

    def save_heartbeats(self, nodes: Iterable[NodeInfo]) -> None:
        with self._transaction():
            self._db.executemany(
                "UPDATE nodes SET last_heartbeat_unix_ms = ? WHERE node_id = ?",
                [(n.last_heartbeat_unix_ms, n.node_id) for n in nodes],
            )

    def save_audit_head(
        self,
        key: str,
        head: bytes,
        accepted_unix_ms: int,
        incarnation: int = 0,
        closes: bool = False,
        region: str = "",
    ) -> None:
        """Stores a node's last accepted signed head (serialized SignedAuditHead) under `key`, its
        node id (the column is named region: a store of an older version keyed heads by region,
        and coordinator.audit_heads.stored_heads reads both), with the node's incarnation. With
        `closes` (a new incarnation's first head), the head it replaces is kept as its chain's
        last, in the same transaction, so that the proof of the old chain is never lost: found
        under the node id, or (an older store's row) under the node's `region`, which is then
        moved to the closed chains."""
        with self._transaction():
            if closes:
                moved = self._close_audit_head(key, key, accepted_unix_ms)
                if (
                    not moved
                    and region
                    and region != key
                    and self._close_audit_head(key, region, accepted_unix_ms)
                ):
                    self._db.execute("DELETE FROM audit_heads WHERE region = ?", (region,))
            self._db.execute(
                "INSERT INTO audit_heads (region, head, accepted_unix_ms, incarnation) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(region) DO UPDATE SET head = excluded.head, "
                "accepted_unix_ms = excluded.accepted_unix_ms, incarnation = excluded.incarnation",
                (key, head, accepted_unix_ms, incarnation),
            )

    def _close_audit_head(self, node_id: str, row_key: str, closed_unix_ms: int) -> bool:
        """Copies the head stored under `row_key` to the closed chains of `node_id`; whether a
        row was copied."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO audit_heads_closed "
            "(node_id, incarnation, head, accepted_unix_ms, closed_unix_ms) "
            "SELECT ?, incarnation, head, accepted_unix_ms, ? FROM audit_heads WHERE region = ?",
            (node_id, closed_unix_ms, row_key),
        )
        return cursor.rowcount > 0

    def load_audit_heads(self) -> dict[str, tuple[bytes, int, int]]:
        rows = self._db.execute(
            "SELECT region, head, accepted_unix_ms, incarnation FROM audit_heads"
        ).fetchall()
        return {str(r): (bytes(h), int(t), int(i)) for r, h, t, i in rows}

    def closed_audit_heads(self) -> list[tuple[str, int, bytes, int, int]]:
        """(node id, incarnation, head, accepted, closed) of every closed chain, oldest first."""
        rows = self._db.execute(
            "SELECT node_id, incarnation, head, accepted_unix_ms, closed_unix_ms FROM audit_heads_closed "
            "ORDER BY closed_unix_ms, node_id"
        ).fetchall()
        return [(str(n), int(i), bytes(h), int(a), int(c)) for n, i, h, a, c in rows]

    def get_meta(self, key: str) -> str:
        """A value of the meta table ("" when absent)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else ""

    def put_meta(self, key: str, value: str) -> None:
        with self._transaction():
            self._put_meta(key, value)

    def _put_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _upsert(self, nodes: Iterable[NodeInfo]) -> None:
        self._db.executemany(
            "INSERT INTO nodes (node_id, region, address, metrics_address, health, last_heartbeat_unix_ms) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET region = excluded.region, "
            "address = excluded.address, metrics_address = excluded.metrics_address, "
            "health = excluded.health, last_heartbeat_unix_ms = excluded.last_heartbeat_unix_ms",
            [
                (n.node_id, n.region, n.address, n.metrics_address, int(n.health), n.last_heartbeat_unix_ms)
                for n in nodes
            ],
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._db.close()
        finally:
            os.close(self._lock_fd)


def _enum(cls: Any, value: Any, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        raise DataCorruption(f"stored {what} {value!r} is not one this coordinator knows") from None


def _request(
    row: Sequence[Any], receipts: tuple[RegionReceipt, ...], release_receipts: tuple[RegionReceipt, ...]
) -> SubjectRequest:
    request_id = str(row[0])
    try:
        pending = json.loads(row[8])
        if not isinstance(pending, list) or not all(isinstance(p, str) for p in pending):
            raise ValueError(pending)
    except ValueError:
        raise DataCorruption(f"stored request {request_id} has unreadable pending regions") from None
    return SubjectRequest(
        request_id=request_id,
        kind=_enum(RequestKind, row[1], f"kind of request {request_id}"),
        subject_id=str(row[2]),
        subject_jurisdiction=str(row[3]),
        reason=str(row[4]),
        received_ms=int(row[5]),
        due_ms=int(row[6]),
        status=_enum(RequestStatus, row[7], f"status of request {request_id}"),
        regions_pending=tuple(pending),
        receipts=receipts,
        completed_ms=int(row[9]),
        records_exported=int(row[10]),
        requested_by=str(row[11]),
        release_receipts=release_receipts,
    )


def _hold(row: Sequence[Any]) -> LegalHold:
    hold_id = str(row[0])
    return LegalHold(
        hold_id=hold_id,
        scope=_enum(HoldScope, row[1], f"scope of legal hold {hold_id}"),
        subject_id=str(row[2]),
        namespace=str(row[3]),
        key=str(row[4]),
        reason=str(row[5]),
        placed_ms=int(row[6]),
        placed_by=str(row[7]),
    )


def _receipt_to_json(r: RegionReceipt) -> str:
    return json.dumps(
        {
            "node_id": r.node_id,
            "started_ms": r.started_ms,
            "completed_ms": r.completed_ms,
            "erased": [[namespace, records] for namespace, records in r.erased],
            "kept": [[k.namespace, k.key, k.reason] for k in r.kept],
            "keys_destroyed": r.keys_destroyed,
            "audit_seq": r.audit_seq,
            "kept_total": r.kept_total,
            "released_hold_id": r.released_hold_id,
        },
        sort_keys=True,
    )


def _receipt_from_json(region: str, text: str) -> RegionReceipt:
    try:
        doc = json.loads(text)
        return RegionReceipt(
            region=region,
            node_id=str(doc["node_id"]),
            started_ms=int(doc["started_ms"]),
            completed_ms=int(doc["completed_ms"]),
            erased=tuple((str(ns), int(n)) for ns, n in doc["erased"]),
            kept=tuple(KeptRecord(str(ns), str(key), str(why)) for ns, key, why in doc["kept"]),
            keys_destroyed=int(doc["keys_destroyed"]),
            audit_seq=int(doc["audit_seq"]),
            # Receipts stored before version 5 have neither: what they list, and no release.
            kept_total=int(doc.get("kept_total", len(doc["kept"]))),
            released_hold_id=str(doc.get("released_hold_id", "")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DataCorruption(f"stored erasure receipt of region {region} is unreadable: {exc}") from None


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as error:
                exc = error
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            # A full or failing disk: nothing was written, and the caller may retry later.
            raise Unavailable(f"coordinator cannot write its state: {exc}; retry later") from exc
