"""The MongoDB engine: the engine core over a region's MongoDB database (pymongo).

Collections (one database per region, shared by every node of the region):
- key_states: one document per (namespace, key): `_id` "<namespace>/<key>" (a namespace holds no
  '/'), `ns`, `k`, `state` (the protobuf KeyState, binary), `live`, `subjects` (every data
  subject a version was ever about, kept after a tombstone like SQLite's subject index) and
  `classifications`, and `by` (a stamp of the node and transaction that wrote it last, so a node
  tailing the region's changes can tell its own from the others', node/engine/mongo_changes.py).
  Indexes: (ns, live, k) for prefix scans, subjects for the subject index.
- changelog: one document per local write of a node: `node`, `lsn`, `ns`, `k`, `mutation`;
  unique index (node, lsn). Each node has its own log and positions.
- counters: one document per node: its last_lsn and the records/tombstones its transactions
  added; counts() sums them, so nodes sharing the database never write the same counter.
- positions: replication positions of a node (`inbound` from a source, `outbound` acks of a target).
- meta: small named blobs of a node (its cached topology, erasure receipts).
- erased_subjects: the region's erasure block list, one document per subject.
- engine_info: the region the database belongs to.
- change_marks: one document per node that tails the region's changes (its fences).

Every write of the core runs as one multi-document transaction (write concern majority, journaled,
snapshot reads). A transaction that hits a write conflict (another node of the region wrote the
same key state) or a transient error is re-run from the start: the core rebuilds positions and
results from what the new attempt reads, so two nodes writing one key concurrently both keep
their versions (siblings or last-writer-wins), never lose one. Transactions need a replica set
(a single-node one is enough); a standalone server is refused at start, by name.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import bson
from bson.binary import Binary
from pymongo import ASCENDING, MongoClient, ReplaceOne, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from pymongo.write_concern import WriteConcern

from domicile.errors import DomicileError, FailedPrecondition, InvalidArgument, Unavailable
from node.engine.backend import LogRow, SnapshotRow, StateRow, Totals
from node.engine.base import CommitOutcomeUnknown, StateTooLarge, StoreCounts
from node.engine.core import EngineCore, check_identity

log = logging.getLogger("domicile.engine.mongo")
T = TypeVar("T")

# How long an operation waits for a reachable server before it fails UNAVAILABLE: short, so a
# write to a node whose database is down fails fast instead of holding its client. The URI's
# own option of the same name wins (mongodb://host/?serverSelectionTimeoutMS=500).
SERVER_SELECTION_TIMEOUT_MS = 2_000
CONNECT_TIMEOUT_MS = 2_000
SOCKET_TIMEOUT_MS = 20_000
_TIMEOUTS_MS = {
    "serverSelectionTimeoutMS": SERVER_SELECTION_TIMEOUT_MS,
    "connectTimeoutMS": CONNECT_TIMEOUT_MS,
    "socketTimeoutMS": SOCKET_TIMEOUT_MS,
}
# A transaction that conflicts or fails transiently is re-run, this many times in all, within
# this long; then the write fails UNAVAILABLE.
TRANSACTION_ATTEMPTS_MAX = 20
TRANSACTION_DEADLINE_S = 10.0
COMMIT_ATTEMPTS_MAX = 5
_LOAD_CHUNK_KEYS = 1_000

# MongoDB's limit on one document (a key state with every sibling), and the server's codes for
# a write past it (BSONObjectTooLarge; an update's or an upsert's result too large, on older
# servers): refusals that no retry changes.
DOCUMENT_BYTES_MAX = 16 * 1024 * 1024
_TOO_LARGE_CODES = frozenset({10334, 17419, 17420})
_WRITE_CONCERN = WriteConcern("majority", j=True)
_TRANSIENT = "TransientTransactionError"
_UNKNOWN_COMMIT = "UnknownTransactionCommitResult"


def default_timeouts(uri: str) -> dict[str, Any]:
    """The timeouts of _TIMEOUTS_MS the URI does not set itself (MongoClient's keyword arguments
    would override the URI's options; option names are case-insensitive)."""
    given = {name.lower() for name in urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)}
    return {name: ms for name, ms in _TIMEOUTS_MS.items() if name.lower() not in given}


def redact_uri(uri: str) -> str:
    """The URI without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class _MongoTx:
    """A WriteTx inside one MongoDB transaction."""

    def __init__(self, backend: MongoBackend, session: ClientSession) -> None:
        self.b = backend
        self.s = session
        # The key states this transaction wrote: what a commit of unknown outcome may have changed.
        self.keys: list[tuple[str, str]] = []

    def totals(self) -> Totals:
        doc = self.b.counters.find_one({"_id": self.b.node_id}, session=self.s)
        if doc is None:
            return Totals()
        return Totals(
            records=int(doc["records"]), tombstones=int(doc["tombstones"]), last_lsn=int(doc["last_lsn"])
        )

    def load_states(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        # Driver errors stay as they are: write() retries the transient ones.
        return self.b.find_states(namespace, keys, session=self.s)

    def store_states(self, rows: Sequence[StateRow]) -> None:
        if not rows:
            return
        stamp = self.b.next_stamp()
        ops = []
        self.keys.extend((r.namespace, r.key) for r in rows)
        for r in rows:
            update: dict[str, Any] = {
                "$set": _state_fields(r, stamp),
                "$addToSet": {"subjects": {"$each": list(r.subjects)}},
            }
            ops.append(UpdateOne({"_id": _state_id(r.namespace, r.key)}, update, upsert=True))
        try:
            self.b.key_states.bulk_write(ops, ordered=True, session=self.s)
        except BulkWriteError as error:
            row = _too_large_row(error, rows)
            if row is None:
                raise
            raise _state_too_large(row) from None
        except DocumentTooLarge:
            # Refused by the driver before sending: the largest state is the one.
            raise _state_too_large(max(rows, key=lambda r: len(r.state))) from None

    def append_log(self, rows: Sequence[LogRow]) -> None:
        self.b.changelog.insert_many(
            [
                {
                    "node": self.b.node_id,
                    "lsn": r.lsn,
                    "ns": r.namespace,
                    "k": r.key,
                    "mutation": Binary(r.mutation),
                }
                for r in rows
            ],
            ordered=True,
            session=self.s,
        )

    def store_totals(self, totals: Totals) -> None:
        self.b.counters.replace_one(
            {"_id": self.b.node_id},
            {"records": totals.records, "tombstones": totals.tombstones, "last_lsn": totals.last_lsn},
            upsert=True,
            session=self.s,
        )

    def _raise(self, kind: str, peer: str, lsn: int) -> int:
        doc_id = f"{kind}:{self.b.node_id}:{peer}"
        doc = self.b.positions.find_one({"_id": doc_id}, session=self.s)
        position = max(lsn, int(doc["lsn"]) if doc else 0)
        if doc is None or position != int(doc["lsn"]):
            self.b.positions.replace_one(
                {"_id": doc_id},
                {"node": self.b.node_id, "kind": kind, "peer": peer, "lsn": position},
                upsert=True,
                session=self.s,
            )
        return position

    def raise_inbound(self, source: str, lsn: int) -> int:
        return self._raise("inbound", source, lsn)

    def raise_outbound(self, target: str, lsn: int) -> None:
        self._raise("outbound", target, lsn)

    def put_meta(self, name: str, value: bytes) -> None:
        self.b.meta.replace_one(
            {"_id": f"{self.b.node_id}:{name}"},
            {"node": self.b.node_id, "name": name, "value": Binary(value)},
            upsert=True,
            session=self.s,
        )

    def store_max(self, name: str) -> int:
        doc = self.b.info.find_one({"_id": _MAX + name}, session=self.s)
        return int(doc["value"]) if doc else 0

    def raise_store_max(self, name: str, value: int) -> None:
        # In engine_info, the region's own records, shared by its daemons: none of them is a
        # store of one node (writer_ids_of reads the per-node collections), though a dot floor
        # is named after a node.
        self.b.info.update_one({"_id": _MAX + name}, {"$max": {"value": value}}, upsert=True, session=self.s)

    def other_writers(self) -> list[str]:
        # Every node that has committed to the database has its counters document; one that
        # has not issued no dot here.
        found = self.b.counters.find({"_id": {"$ne": self.b.node_id}}, {"_id": 1}, session=self.s)
        return sorted(str(d["_id"]) for d in found)

    def block_subject(self, digest: str, request_id: str) -> None:
        self.b.erased.bulk_write(
            [ReplaceOne({"_id": digest}, {"request_id": request_id}, upsert=True)], session=self.s
        )

    def carry_audit(self, rows: Sequence[tuple[int, bytes]], settled_through: int) -> None:
        raise FailedPrecondition(
            "the MongoDB engine does not carry audit entries in its commits; a write waits for its "
            "entry in the audit log instead"
        )

    def carry_received(self, bodies: Sequence[bytes], settled_through: int) -> list[int]:
        raise FailedPrecondition(
            "the MongoDB engine does not carry audit entries in its commits; a replicated apply "
            "waits for its entries in the audit log instead"
        )

    def delete_log(self, through_lsn: int) -> None:
        self.b.changelog.delete_many({"node": self.b.node_id, "lsn": {"$lte": through_lsn}}, session=self.s)

    def delete_states(self, namespace: str, keys: Mapping[str, Sequence[str]]) -> None:
        if keys:
            self.keys.extend((namespace, k) for k in keys)
            self.b.key_states.delete_many(
                {"_id": {"$in": [_state_id(namespace, k) for k in keys]}}, session=self.s
            )


class MongoBackend:
    """The Backend on one MongoDB database, for one node of the region."""

    # Writes wait for their audit entry in the audit log before they commit (write-ahead).
    carries_audit = False

    def __init__(self, uri: str, database: str, node_id: str, region: str) -> None:
        self.uri = uri
        self.label = f"MongoDB at {redact_uri(uri)} (database {database})"
        self.node_id = node_id
        self.region = region
        self._closed = False
        self._lock = threading.Lock()
        # Stamps of this process's transactions: "<node>/<random>/<n>". A stamp differs at every
        # transaction, so a change stream shows it among a document's updated fields each time.
        self.stamp_origin = f"{node_id}/{secrets.token_hex(4)}"
        self._stamps = itertools.count(1)
        try:
            self.client: MongoClient[dict[str, Any]] = MongoClient(
                uri,
                **default_timeouts(uri),
                appname=f"domicile-{node_id}",
                retryWrites=True,
                retryReads=True,
            )
        except (PyMongoError, ValueError) as error:
            raise InvalidArgument(f"mongodb_uri {redact_uri(uri)!r} is not usable: {error}") from None
        # Reads outside a transaction (the change log a sender reads, Gets, scans) see only what
        # a majority holds: on a replica set a read of "local" could see a write a failover then
        # rolls back, whose position and dot this node would issue again to another write.
        self.db: Database[dict[str, Any]] = self.client.get_database(
            database,
            write_concern=_WRITE_CONCERN,
            read_concern=ReadConcern("majority"),
            read_preference=ReadPreference.PRIMARY,
        )
        self.key_states: Collection[dict[str, Any]] = self.db["key_states"]
        self.changelog: Collection[dict[str, Any]] = self.db["changelog"]
        self.counters: Collection[dict[str, Any]] = self.db["counters"]
        self.positions: Collection[dict[str, Any]] = self.db["positions"]
        self.meta: Collection[dict[str, Any]] = self.db["meta"]
        self.erased: Collection[dict[str, Any]] = self.db["erased_subjects"]
        self.info: Collection[dict[str, Any]] = self.db["engine_info"]
        self.marks: Collection[dict[str, Any]] = self.db["change_marks"]
        try:
            self._prepare()
        except BaseException:
            self.client.close()
            raise

    def _prepare(self) -> None:
        with self._errors():
            hello = self.client.admin.command("hello")
            if not hello.get("setName") and hello.get("msg") != "isdbgrid":
                raise FailedPrecondition(
                    f"{self.label} is a standalone server; this engine commits with multi-document "
                    "transactions, which need a replica set (a single-node replica set is enough)"
                )
            existing = set(self.db.list_collection_names())
            for name in (
                "key_states",
                "changelog",
                "counters",
                "positions",
                "meta",
                "erased_subjects",
                "engine_info",
                "change_marks",
            ):
                if name not in existing:
                    # Collections are created before any transaction: creating one inside a
                    # transaction is not allowed on every server version.
                    self.db.create_collection(name, check_exists=False)
            self.key_states.create_index([("ns", ASCENDING), ("live", ASCENDING), ("k", ASCENDING)])
            self.key_states.create_index([("subjects", ASCENDING)])
            # Tombstone garbage collection walks the keys with no live version.
            self.key_states.create_index([("live", ASCENDING), ("ns", ASCENDING), ("k", ASCENDING)])
            self.changelog.create_index([("node", ASCENDING), ("lsn", ASCENDING)], unique=True)
            self.info.update_one({"_id": "region"}, {"$setOnInsert": {"value": self.region}}, upsert=True)
            doc = self.info.find_one({"_id": "region"})
        owner = doc["value"] if doc else None
        if owner != self.region:
            raise FailedPrecondition(
                f"{self.label} belongs to region {owner!r}, not {self.region!r}; a region's database "
                "is shared only by nodes of that region"
            )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turns driver errors into the node's errors: a server that cannot be reached is
        UNAVAILABLE, with the server named (never its password)."""
        if self._closed:
            raise Unavailable("storage engine is closed")
        try:
            yield
        except DomicileError:
            raise
        except ServerSelectionTimeoutError as error:
            raise Unavailable(f"{self.label} is unreachable ({_first_line(error)}); retry later") from None
        except ConnectionFailure as error:
            raise Unavailable(f"lost the connection to {self.label} ({_first_line(error)}); retry") from None
        except OperationFailure as error:
            if error.has_error_label(_TRANSIENT) or error.has_error_label(_UNKNOWN_COMMIT):
                raise Unavailable(f"{self.label} could not commit ({_first_line(error)}); retry") from None
            raise Unavailable(f"{self.label} refused an operation: {_first_line(error)}") from None
        except PyMongoError as error:
            if self._closed:
                raise Unavailable("storage engine is closed") from None
            raise Unavailable(f"{self.label} failed: {_first_line(error)}") from None

    def next_stamp(self) -> str:
        return f"{self.stamp_origin}/{next(self._stamps)}"

    def state_too_large(self, row: StateRow) -> StateTooLarge | None:
        # The document store_states makes of the row, measured as the server measures it. A
        # stamp of the longest form stands in for the transaction's. The subjects are those the
        # stored document keeps ($addToSet keeps a subject after the versions about it are
        # superseded) and the row's: without the kept ones, a state within their bytes of the
        # limit was judged to fit, the server refused it, and every write of its key was refused
        # with it (EngineCore.commit_local). Read outside the transaction: only judged keys
        # come here, and a document's subjects only grow.
        state_id = _state_id(row.namespace, row.key)
        stamp = f"{self.stamp_origin}/{'9' * 20}"
        document = {"_id": state_id, **_state_fields(row, stamp)}
        stored = self.key_states.find_one({"_id": state_id}, {"subjects": 1})
        kept = list(stored.get("subjects", [])) if stored is not None else []
        known = set(kept)
        document["subjects"] = [*kept, *(s for s in row.subjects if s not in known)]
        return _state_too_large(row) if len(bson.encode(document)) > DOCUMENT_BYTES_MAX else None

    def ping(self) -> None:
        """Raises Unavailable when the database cannot be reached now."""
        with self._errors():
            self.client.admin.command("ping")

    # -- writes ------------------------------------------------------------------------------

    def write(self, fn: Callable[[_MongoTx], T]) -> T:
        deadline = time.monotonic() + TRANSACTION_DEADLINE_S
        attempt = 0
        with self._errors(), self.client.start_session() as session:
            while True:
                attempt += 1
                session.start_transaction(
                    read_concern=ReadConcern("snapshot"),
                    write_concern=_WRITE_CONCERN,
                    read_preference=ReadPreference.PRIMARY,
                )
                tx = _MongoTx(self, session)
                try:
                    result = fn(tx)
                except OperationFailure as error:
                    _abort(session)
                    if error.has_error_label(_TRANSIENT) and _may_retry(attempt, deadline):
                        _pause(attempt)
                        continue
                    raise
                except BaseException:
                    _abort(session)
                    raise
                try:
                    self._commit(session, tx)
                except OperationFailure as error:
                    if error.has_error_label(_TRANSIENT) and _may_retry(attempt, deadline):
                        _pause(attempt)
                        continue
                    raise
                return result

    def _commit(self, session: ClientSession, tx: _MongoTx) -> None:
        # Committing again is safe (the server answers for the transaction it already knows),
        # so an unknown outcome is retried a few times before the write is reported as failed.
        for attempt in range(1, COMMIT_ATTEMPTS_MAX + 1):
            try:
                session.commit_transaction()
                return
            except (ConnectionFailure, OperationFailure) as error:
                unknown = isinstance(error, ConnectionFailure) or error.has_error_label(_UNKNOWN_COMMIT)
                if not unknown:
                    raise
                if attempt == COMMIT_ATTEMPTS_MAX:
                    # It may have committed: the keys go with the error, so the cache drops them
                    # (the change stream skips this process's own changes).
                    raise CommitOutcomeUnknown(
                        f"{self.label} did not answer whether a commit took effect "
                        f"({_first_line(error)}); retry",
                        tx.keys,
                    ) from None
                _pause(attempt)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.client.close()

    # -- reads -------------------------------------------------------------------------------

    def load_states(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        with self._errors():
            return self.find_states(namespace, keys)

    def find_states(
        self, namespace: str, keys: Sequence[str], *, session: ClientSession | None = None
    ) -> dict[str, bytes]:
        states: dict[str, bytes] = {}
        for i in range(0, len(keys), _LOAD_CHUNK_KEYS):
            chunk = keys[i : i + _LOAD_CHUNK_KEYS]
            if len(chunk) == 1:
                doc = self.key_states.find_one(
                    {"_id": _state_id(namespace, chunk[0])}, {"k": 1, "state": 1}, session=session
                )
                docs = [doc] if doc is not None else []
            else:
                docs = list(
                    self.key_states.find(
                        {"_id": {"$in": [_state_id(namespace, k) for k in chunk]}},
                        {"k": 1, "state": 1},
                        session=session,
                    )
                )
            for doc in docs:
                states[str(doc["k"])] = bytes(doc["state"])
        return states

    def scan(
        self, namespace: str, lower: str, inclusive: bool, upper: str | None, limit: int
    ) -> list[tuple[str, bytes]]:
        bounds: dict[str, str] = {"$gte" if inclusive else "$gt": lower}
        if upper is not None:
            bounds["$lt"] = upper
        with self._errors():
            cursor = (
                self.key_states.find({"ns": namespace, "live": True, "k": bounds}, {"k": 1, "state": 1})
                .sort([("k", ASCENDING)])
                .limit(limit)
            )
            return [(str(doc["k"]), bytes(doc["state"])) for doc in cursor]

    def read_log(self, after_lsn: int, limit: int) -> list[LogRow]:
        with self._errors():
            cursor = (
                self.changelog.find({"node": self.node_id, "lsn": {"$gt": after_lsn}})
                .sort([("lsn", ASCENDING)])
                .limit(limit)
            )
            return [LogRow(int(d["lsn"]), str(d["ns"]), str(d["k"]), bytes(d["mutation"])) for d in cursor]

    def last_lsn(self) -> int:
        with self._errors():
            doc = self.counters.find_one({"_id": self.node_id})
        return int(doc["last_lsn"]) if doc else 0

    def other_writer_ids(self) -> list[str]:
        with self._errors():
            found = self.counters.find({"_id": {"$ne": self.node_id}}, {"_id": 1})
            return sorted(str(d["_id"]) for d in found)

    def inbound_position(self, source: str) -> int:
        with self._errors():
            doc = self.positions.find_one({"_id": f"inbound:{self.node_id}:{source}"})
        return int(doc["lsn"]) if doc else 0

    def outbound_acks(self) -> dict[str, int]:
        with self._errors():
            docs = self.positions.find({"node": self.node_id, "kind": "outbound"})
            return dict(sorted((str(d["peer"]), int(d["lsn"])) for d in docs))

    def subject_keys(self, subject_id: str) -> list[tuple[str, str]]:
        with self._errors():
            docs = self.key_states.find({"subjects": subject_id}, {"ns": 1, "k": 1})
            return sorted((str(d["ns"]), str(d["k"])) for d in docs)

    def namespaces(self) -> list[str]:
        with self._errors():
            return sorted(str(n) for n in self.key_states.distinct("ns"))

    def counts(self) -> StoreCounts:
        # Each node of the region counts what its own transactions changed; the region's
        # totals are the sum.
        with self._errors():
            docs = list(self.counters.find({}, {"records": 1, "tombstones": 1}))
        return StoreCounts(
            records=sum(int(d["records"]) for d in docs), tombstones=sum(int(d["tombstones"]) for d in docs)
        )

    def get_meta(self, name: str) -> bytes | None:
        with self._errors():
            doc = self.meta.find_one({"_id": f"{self.node_id}:{name}"})
        return bytes(doc["value"]) if doc else None

    def store_max(self, name: str) -> int:
        with self._errors():
            doc = self.info.find_one({"_id": _MAX + name})
        return int(doc["value"]) if doc else 0

    def blocked_subjects(self) -> dict[str, str]:
        with self._errors():
            return {str(d["_id"]): str(d["request_id"]) for d in self.erased.find({})}

    def read_audit_outbox(self, after_lsn: int) -> list[tuple[int, bytes]]:
        return []

    def read_audit_received(self, after_seq: int) -> list[tuple[int, bytes]]:
        return []

    def last_audit_received(self) -> int:
        return 0

    def states_after(self, namespace: str, after_key: str, limit: int) -> list[tuple[str, bytes]]:
        with self._errors():
            cursor = (
                self.key_states.find({"ns": namespace, "k": {"$gt": after_key}}, {"k": 1, "state": 1})
                .sort([("k", ASCENDING)])
                .limit(limit)
            )
            return [(str(doc["k"]), bytes(doc["state"])) for doc in cursor]

    def dead_states(self, after: tuple[str, str], limit: int) -> list[SnapshotRow]:
        query = {
            "live": False,
            "$or": [{"ns": {"$gt": after[0]}}, {"ns": after[0], "k": {"$gt": after[1]}}],
        }
        with self._errors():
            cursor = (
                self.key_states.find(query, {"ns": 1, "k": 1, "state": 1})
                .sort([("live", ASCENDING), ("ns", ASCENDING), ("k", ASCENDING)])
                .limit(limit)
            )
            return [(str(d["ns"]), str(d["k"]), bytes(d["state"])) for d in cursor]

    @contextmanager
    def snapshot_at(self) -> Iterator[tuple[int, Iterator[SnapshotRow]]]:
        # This node's counter and every state read in one snapshot transaction.
        with self._errors(), self.client.start_session() as session:
            session.start_transaction(
                read_concern=ReadConcern("snapshot"), read_preference=ReadPreference.PRIMARY
            )
            try:
                doc = self.counters.find_one({"_id": self.node_id}, session=session)
                last = int(doc["last_lsn"]) if doc else 0
                cursor = self.key_states.find({}, {"ns": 1, "k": 1, "state": 1}, session=session).sort(
                    [("ns", ASCENDING), ("k", ASCENDING)]
                )
                yield last, ((str(d["ns"]), str(d["k"]), bytes(d["state"])) for d in cursor)
            finally:
                _abort(session)

    @contextmanager
    def snapshot(self) -> Iterator[Iterator[SnapshotRow]]:
        # One transaction with snapshot read concern: every document as of its start, however
        # long the iteration takes (within the server's transaction lifetime).
        with self._errors(), self.client.start_session() as session:
            session.start_transaction(
                read_concern=ReadConcern("snapshot"), read_preference=ReadPreference.PRIMARY
            )
            try:
                cursor = self.key_states.find({}, {"ns": 1, "k": 1, "state": 1}, session=session).sort(
                    [("ns", ASCENDING), ("k", ASCENDING)]
                )
                yield ((str(d["ns"]), str(d["k"]), bytes(d["state"])) for d in cursor)
            finally:
                _abort(session)


class MongoEngine(EngineCore):
    """The engine core over a region's MongoDB database."""

    def __init__(self, uri: str, database: str, node_id: str, region: str) -> None:
        check_identity(node_id, region)
        self.mongo = MongoBackend(uri, database, node_id, region)
        super().__init__(self.mongo, node_id, region)

    def writer_ids_of(self, node_id: str) -> list[str]:
        """The writer ids of every store of `node_id` this database holds (the node id itself
        and "<node id>.<epoch>" for each restored incarnation), from any document a store of
        its own writes: the regions' shared records are nobody's. A restore refuses a database
        that holds one (domicile restore)."""
        pattern = {"$regex": f"^{re.escape(node_id)}(\\.[0-9]+)?$"}
        b = self.mongo
        with b._errors():
            found = {str(d["_id"]) for d in b.counters.find({"_id": pattern}, {"_id": 1})}
            for collection in (b.meta, b.positions, b.changelog):
                found.update(str(v) for v in collection.distinct("node", {"node": pattern}))
        return sorted(found)


# The engine_info documents of the store's growing numbers (WriteTx.store_max) are named this
# and the name.
_MAX = "max:"


def _state_id(namespace: str, key: str) -> str:
    return f"{namespace}/{key}"


def _state_fields(row: StateRow, stamp: str) -> dict[str, Any]:
    """The fields of a key state's document store_states sets (the subjects are added to)."""
    return {
        "ns": row.namespace,
        "k": row.key,
        "state": Binary(row.state),
        "live": row.live,
        "classifications": list(row.classifications),
        "by": stamp,
    }


def _too_large_row(error: BulkWriteError, rows: Sequence[StateRow]) -> StateRow | None:
    """The row of an ordered bulk write the server refused as too large, if that is why."""
    for write_error in error.details.get("writeErrors", []):
        index = write_error.get("index")
        if write_error.get("code") in _TOO_LARGE_CODES and isinstance(index, int) and 0 <= index < len(rows):
            return rows[index]
    return None


def _state_too_large(row: StateRow) -> StateTooLarge:
    return StateTooLarge(
        f"{row.namespace}/{row.key} would hold a key state of {len(row.state)} bytes with every "
        f"sibling, past MongoDB's document limit of {DOCUMENT_BYTES_MAX} bytes (16 MiB); the write "
        "was not made. Resolve the siblings (a Delete without a context supersedes every version) "
        "or write a smaller value",
        row.namespace,
        row.key,
    )


def _abort(session: ClientSession) -> None:
    if session.in_transaction:
        # The server drops an abandoned transaction by itself when this fails.
        with contextlib.suppress(PyMongoError):
            session.abort_transaction()


def _may_retry(attempt: int, deadline: float) -> bool:
    return attempt < TRANSACTION_ATTEMPTS_MAX and time.monotonic() < deadline


def _pause(attempt: int) -> None:
    # Jittered, so two nodes that conflicted do not collide again in step.
    time.sleep(min(0.2, 0.002 * (2**attempt)) * random.random())


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:300] if str(error) else type(error).__name__
