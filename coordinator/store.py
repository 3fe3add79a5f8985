"""SQLite persistence of nodes, their health and the topology revision.

Every revision bump is committed (synchronous=FULL) before it is published, so a revision a
node has seen is never reissued after a crash. Last-heartbeat times are flushed in batches:
losing a few seconds of them in a crash only delays nothing (a restarted coordinator gives
every node a fresh grace period anyway).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from coordinator.topology import NodeHealth, NodeState
from domicile.errors import DataCorruption, FailedPrecondition, Unavailable

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    address TEXT NOT NULL,
    metrics_address TEXT NOT NULL,
    health INTEGER NOT NULL,
    last_heartbeat_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_heads (
    region TEXT PRIMARY KEY,
    head BLOB NOT NULL,
    accepted_unix_ms INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class StoredState:
    revision: int
    cluster_fingerprint: str
    nodes: tuple[NodeState, ...]


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
            self._db = sqlite3.connect(data_dir / self.DB_NAME, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._init_schema()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False

    def _init_schema(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise FailedPrecondition(
                f"coordinator data has schema version {version}; this coordinator supports up to "
                f"{SCHEMA_VERSION}; run a newer coordinator"
            )
        # executescript commits on its own; the statements are idempotent, so a crash between
        # them and the version stamp is repaired by the next start.
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

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
            nodes.append(NodeState(node_id, region, address, metrics_address, parsed_health, last_ms))
        return StoredState(revision, meta.get("cluster_fingerprint", ""), tuple(nodes))

    def commit(
        self,
        revision: int,
        nodes: Iterable[NodeState] = (),
        cluster_fingerprint: str | None = None,
    ) -> None:
        """Writes the new revision together with the nodes that changed, atomically."""
        with self._transaction():
            self._put_meta("revision", str(revision))
            if cluster_fingerprint is not None:
                self._put_meta("cluster_fingerprint", cluster_fingerprint)
            self._upsert(nodes)

    def save_heartbeats(self, nodes: Iterable[NodeState]) -> None:
        with self._transaction():
            self._db.executemany(
                "UPDATE nodes SET last_heartbeat_unix_ms = ? WHERE node_id = ?",
                [(n.last_heartbeat_unix_ms, n.node_id) for n in nodes],
            )

    def save_audit_head(self, region: str, head: bytes, accepted_unix_ms: int) -> None:
        """Stores a region's last accepted signed head (serialized SignedAuditHead)."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO audit_heads (region, head, accepted_unix_ms) VALUES (?, ?, ?) "
                "ON CONFLICT(region) DO UPDATE SET head = excluded.head, "
                "accepted_unix_ms = excluded.accepted_unix_ms",
                (region, head, accepted_unix_ms),
            )

    def load_audit_heads(self) -> dict[str, tuple[bytes, int]]:
        rows = self._db.execute("SELECT region, head, accepted_unix_ms FROM audit_heads").fetchall()
        return {str(r): (bytes(h), int(t)) for r, h, t in rows}

    def _put_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _upsert(self, nodes: Iterable[NodeState]) -> None:
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
