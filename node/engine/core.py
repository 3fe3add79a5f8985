"""The engine core: everything a storage engine does that does not depend on its database.

It checks input, builds local writes (dots, HLCs, change-log positions) and merges replicated
ones through domicile.causality, keeps the running totals, bounds prefix scans, and verifies
every version's checksum when a state or log entry is read back. Below it a Backend
(node.engine.backend) stores bytes: SQLite (node.engine.sqlite) or MongoDB (node.engine.mongo).
Two engines given the same calls therefore hold the same states.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace

from google.protobuf.message import DecodeError

from domicile import causality
from domicile.audit import AuditEntry
from domicile.causality import CausalContext, Dot, KeyState, Mutation, RequestMark, Version
from domicile.errors import DataCorruption, DomicileError, FailedPrecondition, InvalidArgument
from domicile.model import (
    Classification,
    check_namespace_name,
    check_request_id,
    check_writer_id,
)
from domicile.v1 import record_pb2
from domicile.wire.records import (
    key_state_from_bytes,
    key_state_to_bytes,
    mutation_from_bytes,
    mutation_to_pb,
)
from node.engine.backend import Backend, LogRow, SnapshotRow, StateRow, Totals, WriteTx
from node.engine.base import (
    GET_MANY_KEYS_MAX,
    ApplyOutcome,
    Committed,
    LocalWrite,
    LogStart,
    StateTooLarge,
    StoreCounts,
    answer_bytes,
)

SCAN_RECORDS_MAX = 10_000
LOG_READ_RECORDS_MAX = 10_000
APPLY_BATCH_RECORDS_MAX = 10_000
META_NAME_CHARS_MAX = 255
META_VALUE_BYTES_MAX = 4 * 1024 * 1024
# Counters are stored as protobuf uint64 and checked below 2^62 on the wire (domicile.wire.records).
DOT_COUNTER_MAX = (1 << 62) - 1

_Key = tuple[str, str]

# Meta names of bounded growth: where the change log now starts (the last truncated position
# and its entry's HLC) and the HLC before which tombstones may have been purged.
META_LOG_START = "changelog_start"
META_PURGED_BEFORE = "tombstones_purged_before_hlc"
# The store's number (WriteTx.store_max) of the HLC before which tombstones may have been purged:
# one for the store, whichever of the nodes writing to it purged (a bootstrap any of them serves
# must carry it). META_PURGED_BEFORE is where a node kept its own before.
PURGED_BEFORE = "tombstones-purged-before-hlc"


def dot_floor_name(node_id: str) -> str:
    """The store's number (WriteTx.store_max) above which node_id's next dot for a key the store
    does not hold is issued: the highest counter of the node in any key state the store deleted."""
    return f"dot-floor:{node_id}"


def _refuse_key(
    writes: Sequence[LocalWrite], refusals: list[DomicileError | None], error: StateTooLarge
) -> bool:
    """Refuses, with `error`, the writes of the key it names not refused yet; whether any was."""
    refused = False
    for i, write in enumerate(writes):
        if refusals[i] is None and (write.namespace, write.key) == (error.namespace, error.key):
            refusals[i] = error
            refused = True
    return refused


class _WorkingSet:
    """The key states one write transaction touches: loaded in bulk, updated in memory (so a
    write sees the earlier writes of its batch), written back once per key."""

    def __init__(self, tx: WriteTx, keys: Sequence[_Key]) -> None:
        self._loaded: dict[_Key, KeyState | DataCorruption] = {}
        self._dirty: dict[_Key, KeyState] = {}
        # Per key, the version its last write made in the protobuf form its change-log entry
        # was encoded in: flush copies it into the state instead of encoding it again.
        self._encoded: dict[_Key, tuple[Version, record_pb2.RecordVersion]] = {}
        by_namespace: dict[str, list[str]] = {}
        for namespace, key in dict.fromkeys(keys):
            by_namespace.setdefault(namespace, []).append(key)
        for namespace, names in by_namespace.items():
            for key, blob in tx.load_states(namespace, names).items():
                try:
                    self._loaded[(namespace, key)] = decode_state(namespace, key, blob)
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

    def put(
        self,
        namespace: str,
        key: str,
        state: KeyState,
        encoded: tuple[Version, record_pb2.RecordVersion] | None = None,
    ) -> None:
        k = (namespace, key)
        self._dirty[k] = state
        if encoded is not None:
            self._encoded[k] = encoded
        else:
            self._encoded.pop(k, None)

    def flush(self, tx: WriteTx, totals: Totals) -> None:
        rows = []
        for (namespace, key), state in self._dirty.items():
            before = self._loaded.get((namespace, key))
            row = _state_row(namespace, key, state, self._encoded.get((namespace, key)))
            totals.move(before is not None, isinstance(before, KeyState) and before.has_live(), row.live)
            rows.append(row)
        tx.store_states(rows)


class _Floors:
    """The counters of the key states a transaction deletes, by node: each node's dot floor is
    raised to them (dot_floor_name), so no node reuses a dot of a deleted key. Every node
    the contexts name is raised: which of them write to this store the context cannot tell,
    and a floor no writer reads costs a row."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}

    def add(self, context: CausalContext) -> None:
        for node_id, counter in causality.issued_counters(context).items():
            if counter > self._counters.get(node_id, 0):
                self._counters[node_id] = counter

    def raise_in(self, tx: WriteTx) -> None:
        for node_id, counter in sorted(self._counters.items()):
            tx.raise_store_max(dot_floor_name(node_id), counter)


class EngineCore:
    """A StorageEngine over a Backend."""

    def __init__(self, backend: Backend, node_id: str, region: str) -> None:
        self.backend = backend
        self.node_id = node_id
        self.region = region
        self.audit_settled: Callable[[], int] = lambda: 0
        self.audit_received_settled: Callable[[], int] = lambda: 0
        # The dot and context of a first write to a key that supersedes nothing (most writes of
        # a bulk load): always the same, so made once. Shared like CausalContext.empty(): both
        # are immutable.
        self._first_dot = Dot(node_id, 1)
        self._dot_floor = dot_floor_name(node_id)
        self._first_context = CausalContext.empty().add(self._first_dot)

    @property
    def carries_audit(self) -> bool:
        return self.backend.carries_audit

    def audit_outbox(self, after_lsn: int) -> list[tuple[int, bytes]]:
        return self.backend.read_audit_outbox(after_lsn)

    def audit_received(self, after_seq: int) -> list[tuple[int, bytes]]:
        return self.backend.read_audit_received(after_seq)

    def last_audit_received(self) -> int:
        return self.backend.last_audit_received()

    # -- writes ------------------------------------------------------------------------------

    def commit_local(
        self, writes: Sequence[LocalWrite], stamp: Callable[[], int]
    ) -> list[Committed | DomicileError]:
        if not writes:
            return []
        # Everything that can refuse a single write runs before anything is written, and a
        # refused write leaves no trace in the working set, so it changes nothing while the
        # others still commit.
        refusals: list[DomicileError | None] = [_local_write_error(w) or self._audit_error(w) for w in writes]
        # Keys whose state the backend refused as too large: on the next attempt each of their
        # writes is judged on the state the writes before it left, as if committed alone.
        judged: set[_Key] = set()

        def commit(tx: WriteTx) -> list[Committed | DomicileError]:
            totals = tx.totals()
            keys = [(w.namespace, w.key) for w, r in zip(writes, refusals, strict=True) if r is None]
            work = _WorkingSet(tx, keys)
            floor: list[int] = []

            def dot_floor() -> int:
                # Read in the transaction, at most once, and only for a key the store does not
                # hold: another node writing to the same store may have raised it.
                if not floor:
                    floor.append(tx.store_max(self._dot_floor))
                return floor[0]

            results: list[Committed | DomicileError] = []
            log_rows: list[LogRow] = []
            audit_rows: list[tuple[int, bytes]] = []
            for write, refusal in zip(writes, refusals, strict=True):
                if refusal is not None:
                    results.append(refusal)
                    continue
                try:
                    state = work.get(write.namespace, write.key)
                    committed = self._build_local(state, write, stamp, totals, dot_floor)
                except DomicileError as error:
                    results.append(error)
                    continue
                if committed.replayed:
                    results.append(committed)
                    continue
                mutation = committed.mutation
                # Encoded once: the log entry's bytes, and its version for the key state.
                encoded = mutation_to_pb(mutation)
                known = (mutation.version, encoded.version)
                too_large = self._too_large(judged, write, committed.state, known) if judged else None
                if too_large is not None:
                    # Refused before it is put anywhere: its position, dot and request mark go
                    # to the key's next write, and no log entry or replica ever sees them.
                    results.append(too_large)
                    continue
                results.append(committed)
                work.put(write.namespace, write.key, committed.state, known)
                committed.encoded = known  # before anyone sees it: the answer copies it too
                body = encoded.SerializeToString(deterministic=True)
                log_rows.append(LogRow(mutation.lsn, write.namespace, write.key, body))
                if write.audit is not None:
                    audit_rows.append((mutation.lsn, write.audit.encode()))
                totals.last_lsn = mutation.lsn
            if log_rows:
                tx.append_log(log_rows)
                if audit_rows:
                    # The entries commit with their writes: a write is never durable without
                    # its entry (node/compliance/audit_log.py carry()).
                    tx.carry_audit(audit_rows, self.audit_settled())
                work.flush(tx, totals)
                tx.store_totals(totals)
            return results

        while True:
            try:
                return self.backend.write(commit)
            except StateTooLarge as error:
                # A key state the backend can never store. The attempt again, the key's writes
                # judged one by one: those that fit are made, one that would pass the limit is
                # refused alone, and the rest of the batch (other callers' writes) is committed.
                # Refused though judged (the backend measured otherwise): all its writes are.
                key = (error.namespace, error.key)
                if key not in judged:
                    judged.add(key)
                elif not _refuse_key(writes, refusals, error):
                    raise

    def _too_large(
        self,
        judged: Collection[_Key],
        write: LocalWrite,
        state: KeyState,
        encoded: tuple[Version, record_pb2.RecordVersion],
    ) -> StateTooLarge | None:
        """The backend's refusal of the state a write of a judged key makes, if too large."""
        if (write.namespace, write.key) not in judged:
            return None
        return self.backend.state_too_large(_state_row(write.namespace, write.key, state, encoded))

    def _audit_error(self, write: LocalWrite) -> DomicileError | None:
        if write.audit is not None and not self.backend.carries_audit:
            return FailedPrecondition(
                "this engine does not carry audit entries in its commits; the write was not made"
            )
        return None

    def _build_local(
        self,
        state: KeyState | None,
        write: LocalWrite,
        stamp: Callable[[], int],
        totals: Totals,
        dot_floor: Callable[[], int],
    ) -> Committed:
        # This node's counters in a context can only be ones it issued for the key: a context
        # beyond them is forged, and would push the key's next dot toward the counter limit
        # (close enough, and every later write to the key fails).
        mark = state.request(write.request_id) if state and write.request_id else None
        if mark is not None:
            if mark.digest and write.request_digest and mark.digest != write.request_digest:
                raise FailedPrecondition(
                    f"request id {write.request_id!r} was used for a different write of "
                    f"{write.namespace}/{write.key}; a retry must send the same write (value, "
                    "content type, subject, jurisdiction, classification, put or delete). Nothing "
                    "was written: give a new write a new request id"
                )
            return _replay(write, mark, self.node_id)
        if write.precondition is not None:
            reason = write.precondition(state)
            if reason:
                raise FailedPrecondition(f"{write.namespace}/{write.key}: {reason}; nothing was written")
        # A key state naming none of this node's counters may be one deleted here (tombstone GC,
        # a bootstrap's prune) and written again, here or by another node: the counters this
        # node had issued for it went with the deleted state. The dot floor is above all of those
        # (and a node that never deleted a state has none), so such a key's next dot starts
        # above it, and a replica that still holds the deleted state never takes it for one
        # of those. A state that names some of them keeps them, as the contexts it merged hold.
        own = state.context.max_counter(self.node_id) if state else 0
        floor = dot_floor() if own == 0 else 0
        issued = own or floor
        claimed = write.supersedes.max_counter(self.node_id) if write.supersedes is not None else 0
        if claimed > issued:
            raise InvalidArgument(
                f"causal context for {write.namespace}/{write.key} names counter {claimed} of this node "
                f"{self.node_id!r}, which has issued only up to {issued} for the key; pass back a context "
                "returned by a read, put or delete of this key"
            )
        # The mutation is built once, with its dot and change-log position (what
        # causality.local_write does, without the copies of the version and mutation it makes).
        supersedes = write.supersedes
        if supersedes is None:
            supersedes = state.context if state is not None else CausalContext.empty()
        first = state is None and not supersedes.vv and not supersedes.dots and issued == 0
        if first:
            dot = self._first_dot
        elif floor:
            # Every counter of this node up to the floor is of a deleted version or of none, so
            # the write covers them all: its context stays one entry for this node, the same
            # at every replica (the mutation carries it), and its dot is the next one.
            supersedes = supersedes.join(CausalContext.of({self.node_id: floor}))
            dot = Dot(self.node_id, floor + 1)
        else:
            dot = causality.next_dot(state, self.node_id, supersedes)
        classification = write.classification
        version = Version(
            dot=dot,
            value=bytes(write.value),
            hlc=stamp(),
            tombstone=write.tombstone,
            content_type=write.content_type,
            subject_id=write.subject_id,
            subject_jurisdiction=write.subject_jurisdiction,
            classification=(
                classification if type(classification) is Classification else Classification(classification)
            ),
            checksum=causality.sha256(write.value),
            origin_region=self.region,
            request_id=write.request_id,
        )
        mutation = Mutation(
            write.namespace,
            write.key,
            supersedes,
            version,
            lsn=totals.last_lsn + 1,
            origin_node_id=self.node_id,
        )
        if state is None and dot.counter <= DOT_COUNTER_MAX and write.siblings_max >= 0:
            # A key this node never held (most writes of a bulk load): the state causality.apply
            # makes of its first version, with the request mark holding the write's position at
            # once instead of being replaced below (tests/unit/test_engine_new_key.py compares the two).
            marks = (
                (
                    RequestMark(
                        write.request_id,
                        (dot,),
                        version.hlc,
                        mutation.lsn,
                        False,
                        digest=write.request_digest,
                    ),
                )
                if write.request_id
                else ()
            )
            context = self._first_context if first else supersedes.add(dot)
            return Committed(mutation, KeyState((version,), context, marks), False, False)
        applied = causality.apply(state, mutation)
        before = len(state.versions) if state else 0
        after = len(applied.state.versions)
        if write.siblings_max and after > write.siblings_max and after > before:
            raise FailedPrecondition(
                f"{write.namespace}/{write.key} holds {before} versions (siblings); this write would make "
                f"{after}, past the namespace's siblings_max of {write.siblings_max}. Nothing was written: "
                "read the key and write or delete with its context_token, which supersedes the siblings"
            )
        if write.read_bytes_max and after > before and after > 1:
            weight = answer_bytes(write.key, applied.state, applied.state.live(), write.answered_value_bytes)
            if weight > write.read_bytes_max:
                raise FailedPrecondition(
                    f"{write.namespace}/{write.key} holds {before} versions (siblings); with this write "
                    f"they would weigh about {weight} bytes, past the {write.read_bytes_max} bytes a read "
                    "answers for one record (read_record_bytes_max). Nothing was written: read the key "
                    "and write or delete with its context_token, which supersedes the siblings"
                )
        if dot.counter > DOT_COUNTER_MAX:
            raise InvalidArgument(
                f"causal context for {write.namespace}/{write.key} carries a counter past 2^62-1 for "
                f"node {self.node_id!r}; pass back a context returned by a read"
            )
        had_live = state is not None and state.has_live()
        new_state = applied.state
        if write.request_id:
            # Where the write was accepted, its mark also answers a retry with the position and
            # with whether a live version existed before it.
            new_state = replace(
                new_state,
                requests=tuple(
                    replace(m, lsn=mutation.lsn, had_live=had_live, digest=write.request_digest)
                    if m.request_id == write.request_id
                    else m
                    for m in new_state.requests
                ),
            )
        return Committed(mutation=mutation, state=new_state, had_live=had_live, conflict=applied.conflict)

    def apply_remote(
        self,
        source_node_id: str,
        mutations: Sequence[Mutation],
        through_lsn: int,
        audit: Sequence[AuditEntry] = (),
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
        if audit and not self.backend.carries_audit:
            raise FailedPrecondition(
                "this engine does not carry audit entries in its commits; the batch was not applied"
            )
        bodies = [entry.encode() for entry in audit]

        def apply(tx: WriteTx) -> ApplyOutcome:
            applied: list[Mutation] = []
            versions_after: list[int] = []
            duplicates = 0
            conflicts = 0
            totals = tx.totals()
            work = _WorkingSet(tx, [(m.namespace, m.key) for m in mutations])
            for m in mutations:
                result = causality.apply(work.get(m.namespace, m.key), m)
                if not result.changed:
                    duplicates += 1
                    continue
                work.put(m.namespace, m.key, result.state)
                applied.append(m)
                versions_after.append(len(result.state.versions))
                if result.conflict:
                    conflicts += 1
            if applied:
                work.flush(tx, totals)
                tx.store_totals(totals)
            position = tx.raise_inbound(source_node_id, through_lsn)
            # The entries commit with the apply: it is never durable without them
            # (node/compliance/audit_log.py carry_received()).
            numbers = tx.carry_received(bodies, self.audit_received_settled()) if bodies else []
            return ApplyOutcome(
                tuple(applied),
                duplicates,
                conflicts,
                position,
                tuple(versions_after),
                tuple(zip(numbers, audit, strict=True)),
            )

        return self.backend.write(apply)

    def carry_purge_point(self, hlc: int) -> None:
        """Records that tombstones before `hlc` may be gone from this store: one rebuilt from a
        store (a backup's snapshot, a rewound store) that had purged them, and holds none of
        them. The bootstraps it serves carry it, so their targets drop what those deleted."""
        if hlc > 0:
            self.backend.write(lambda tx: tx.raise_store_max(PURGED_BEFORE, hlc))

    def restore_states(self, rows: Sequence[SnapshotRow]) -> int:
        """Merges key states read from a backup snapshot into the store, in one transaction;
        returns how many keys changed. Merging (not overwriting) makes it idempotent, like
        apply_remote; nothing enters the change log (this node ships only its own new writes)."""
        decoded = [(ns, key, decode_state(ns, key, blob)) for ns, key, blob in rows]

        def restore(tx: WriteTx) -> int:
            totals = tx.totals()
            work = _WorkingSet(tx, [(ns, key) for ns, key, _ in decoded])
            changed = 0
            for ns, key, state in decoded:
                before = work.get(ns, key)
                after = state if before is None else causality.merge(before, state)
                if after != before:
                    work.put(ns, key, after)
                    changed += 1
            if changed:
                work.flush(tx, totals)
                tx.store_totals(totals)
            return changed

        return self.backend.write(restore)

    def restore_checked_states(self, rows: Sequence[StateRow]) -> int:
        """Like restore_states, for rows whose bytes the caller has already checked (every
        version's checksum) and whose index fields it read from them (a restore, node.backup):
        a key the store does not hold yet is stored with the backup's bytes as they are, with
        no decode and no re-encode; a key it holds already (a MongoDB database shared with the
        region's other nodes, or a key repeated) gets the merge of both. Returns how many keys
        changed."""

        def restore(tx: WriteTx) -> int:
            totals = tx.totals()
            by_namespace: dict[str, list[str]] = {}
            for r in rows:
                by_namespace.setdefault(r.namespace, []).append(r.key)
            held: dict[_Key, bytes] = {
                (ns, key): blob
                for ns, keys in by_namespace.items()
                for key, blob in tx.load_states(ns, list(dict.fromkeys(keys))).items()
            }
            out: dict[_Key, StateRow] = {}
            for r in rows:
                k = (r.namespace, r.key)
                earlier = out[k].state if k in out else held.get(k)
                if earlier is None:
                    out[k] = r
                    totals.move(False, False, r.live)
                    continue
                before = decode_state(r.namespace, r.key, earlier)
                after = causality.merge(before, decode_state(r.namespace, r.key, r.state))
                if after == before:
                    continue
                totals.move(True, before.has_live(), after.has_live())
                out[k] = _state_row(r.namespace, r.key, after)
            if out:
                tx.store_states(list(out.values()))
                tx.store_totals(totals)
            return len(out)

        return self.backend.write(restore)

    # -- bounded growth ------------------------------------------------------------------------

    def log_start(self) -> LogStart:
        """Where the change log starts: what truncation has removed (nothing: LogStart())."""
        blob = self.backend.get_meta(META_LOG_START)
        if blob is None:
            return LogStart()
        doc = json.loads(blob)
        return LogStart(int(doc["lsn"]), int(doc["hlc"]))

    def truncate_log(self, through_lsn: int, limit: int) -> LogStart:
        """Deletes change-log entries up to through_lsn, at most `limit` of them (bounded work:
        call again for more); returns where the log starts now. Positions are never reused: the
        last position is a counter of its own."""
        if not 1 <= limit <= LOG_READ_RECORDS_MAX:
            raise InvalidArgument(
                f"truncation limit {limit} is out of range; use 1 to {LOG_READ_RECORDS_MAX}"
            )
        start = self.log_start()
        through = min(through_lsn, start.lsn + limit, self.backend.last_lsn())
        if through <= start.lsn:
            return start
        # The entry at the new start gives its HLC; the log is immutable below the last position.
        rows = self.backend.read_log(through - 1, 1)
        if not rows or rows[0].lsn != through:
            raise DataCorruption(f"change-log entry {through} is missing; positions have no holes")
        new = LogStart(through, decode_log_entry(rows[0]).version.hlc)
        blob = json.dumps({"lsn": new.lsn, "hlc": new.hlc}).encode()

        def truncate(tx: WriteTx) -> None:
            tx.delete_log(new.lsn)
            tx.put_meta(META_LOG_START, blob)

        self.backend.write(truncate)
        return new

    def snapshot_at(self) -> AbstractContextManager[tuple[int, Iterator[SnapshotRow]]]:
        """Every stored key state as of one moment and this node's change-log position then."""
        return self.backend.snapshot_at()

    def states_after(self, namespace: str, after_key: str, limit: int) -> list[tuple[str, KeyState]]:
        """Keys of the namespace after after_key, tombstoned ones included, in key order."""
        if not 1 <= limit <= SCAN_RECORDS_MAX:
            raise InvalidArgument(f"limit {limit} is out of range; use 1 to {SCAN_RECORDS_MAX}")
        rows = self.backend.states_after(namespace, after_key, limit)
        return [(key, decode_state(namespace, key, blob)) for key, blob in rows]

    def dead_states(self, after: tuple[str, str], limit: int) -> list[tuple[str, str, KeyState]]:
        """Key states with no live version after (namespace, key), in that order."""
        if not 1 <= limit <= SCAN_RECORDS_MAX:
            raise InvalidArgument(f"limit {limit} is out of range; use 1 to {SCAN_RECORDS_MAX}")
        return [
            (ns, key, decode_state(ns, key, blob)) for ns, key, blob in self.backend.dead_states(after, limit)
        ]

    def purged_before(self) -> int:
        """The HLC before which tombstones may have been purged in this store, by any node
        writing to it (0: none purged)."""
        blob = self.backend.get_meta(META_PURGED_BEFORE)
        return max(self.backend.store_max(PURGED_BEFORE), int(blob.decode()) if blob else 0)

    def purge_tombstones(
        self, namespace: str, keys: Sequence[str], purgeable: Callable[[str, KeyState], bool], cutoff_hlc: int
    ) -> int:
        """Deletes the key states that, read again in the write transaction, still have no live
        version and pass `purgeable(key, state)`; records cutoff_hlc as purged_before. Returns how many."""

        def purge(tx: WriteTx) -> int:
            totals = tx.totals()
            states = tx.load_states(namespace, keys)
            doomed: dict[str, tuple[str, ...]] = {}
            floors = _Floors()
            for key, blob in states.items():
                state = decode_state(namespace, key, blob)
                if state.has_live() or not purgeable(key, state):
                    continue
                doomed[key] = tuple(sorted({v.subject_id for v in state.versions if v.subject_id}))
                floors.add(state.context)
            if doomed:
                tx.delete_states(namespace, doomed)
                floors.raise_in(tx)
                totals.tombstones -= len(doomed)
                tx.store_totals(totals)
            if doomed:
                tx.raise_store_max(PURGED_BEFORE, cutoff_hlc)
            return len(doomed)

        return self.backend.write(purge)

    def prune_versions(self, namespace: str, drops: Mapping[str, Collection[Dot]]) -> int:
        """Removes the given versions of the keys (a bootstrap drops what its source purged);
        a key left without versions is deleted. The dots leave the key's context too, so that the
        same write arriving again later is applied, not taken for a duplicate. Returns how many
        keys changed."""
        if not drops:
            return 0

        def prune(tx: WriteTx) -> int:
            totals = tx.totals()
            work = _WorkingSet(tx, [(namespace, key) for key in drops])
            gone: dict[str, tuple[str, ...]] = {}
            floors = _Floors()
            changed = 0
            for key, dots in drops.items():
                state = work.get(namespace, key)
                if state is None:
                    continue
                kept = tuple(v for v in state.versions if v.dot not in dots)
                if len(kept) == len(state.versions):
                    continue
                changed += 1
                if kept:
                    removed = [v for v in state.versions if v.dot in dots]
                    context = causality.context_without(state.context, [v.dot for v in removed])
                    # The counters of the nodes writing to this store stay where they were.
                    writers = {self.node_id} | {
                        v.dot.node_id for v in removed if v.origin_region == self.region
                    }
                    context = causality.keep_issued(state.context, context, sorted(writers))
                    work.put(namespace, key, replace(state, versions=kept, context=context))
                else:
                    gone[key] = tuple(sorted({v.subject_id for v in state.versions if v.subject_id}))
                    floors.add(state.context)
                    if state.has_live():
                        totals.records -= 1
                    else:
                        totals.tombstones -= 1
            work.flush(tx, totals)
            if gone:
                tx.delete_states(namespace, gone)
                floors.raise_in(tx)
            if changed:
                tx.store_totals(totals)
            return changed

        return self.backend.write(prune)

    def withdraw(self, namespace: str, key: str, dots: Sequence[Dot]) -> KeyState | None:
        """Removes those versions of the key from this store only (causality.withdraw): no
        change-log entry, so no stream ships the removal, and no tombstone, so no anti-entropy
        pull can carry it to a replica. Returns the new state, or None when none of the
        versions was there any more."""
        check_encodable("namespace", namespace)
        check_encodable("key", key)
        wanted = frozenset(dots)

        def work(tx: WriteTx) -> KeyState | None:
            totals = tx.totals()
            working = _WorkingSet(tx, [(namespace, key)])
            state = working.get(namespace, key)
            if state is None or not any(v.dot in wanted for v in state.versions):
                return None
            after = causality.withdraw(state, wanted, self.node_id, tx.other_writers())
            working.put(namespace, key, after)
            working.flush(tx, totals)
            tx.store_totals(totals)
            return after

        return self.backend.write(work)

    def record_outbound_ack(self, target_node_id: str, lsn: int) -> None:
        if not target_node_id:
            raise InvalidArgument("target node id is empty; name the node that acknowledged")
        if lsn < 0:
            raise InvalidArgument(f"acknowledged position {lsn} is negative; positions start at 0")
        self.backend.write(lambda tx: tx.raise_outbound(target_node_id, lsn))

    def put_meta(self, name: str, value: bytes) -> None:
        check_meta_name(name)
        if len(value) > META_VALUE_BYTES_MAX:
            raise InvalidArgument(
                f"meta value {name!r} is {len(value)} bytes; the limit is {META_VALUE_BYTES_MAX} bytes"
            )
        blob = bytes(value)
        self.backend.write(lambda tx: tx.put_meta(name, blob))

    def block_subject(self, digest: str, request_id: str) -> None:
        """Keeps a data subject (by the keyed hash of its id) out of this region for good."""
        check_text("subject digest", digest)
        check_text("erasure request id", request_id)
        self.backend.write(lambda tx: tx.block_subject(digest, request_id))

    # -- reads -------------------------------------------------------------------------------

    def get(self, namespace: str, key: str) -> KeyState | None:
        check_encodable("namespace", namespace)
        check_encodable("key", key)
        blob = self.backend.load_states(namespace, [key]).get(key)
        return None if blob is None else decode_state(namespace, key, blob)

    def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, KeyState]:
        return {
            key: decode_state(namespace, key, blob)
            for key, blob in self.get_many_stored(namespace, keys).items()
        }

    def get_many_stored(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        if len(keys) > GET_MANY_KEYS_MAX:
            raise InvalidArgument(
                f"get_many of {len(keys)} keys; read at most {GET_MANY_KEYS_MAX} keys at once"
            )
        check_encodable("namespace", namespace)
        for key in keys:
            check_encodable("key", key)
        return self.backend.load_states(namespace, list(dict.fromkeys(keys)))

    def scan(self, namespace: str, prefix: str, start_after: str, limit: int) -> list[tuple[str, KeyState]]:
        if not 1 <= limit <= SCAN_RECORDS_MAX:
            raise InvalidArgument(f"scan limit {limit} is out of range; use 1 to {SCAN_RECORDS_MAX}")
        check_encodable("namespace", namespace)
        check_encodable("prefix", prefix)
        check_encodable("start key", start_after)
        inclusive = start_after < prefix
        lower = prefix if inclusive else start_after
        rows = self.backend.scan(namespace, lower, inclusive, prefix_upper_bound(prefix), limit)
        return [(key, decode_state(namespace, key, blob)) for key, blob in rows]

    def read_log(self, after_lsn: int, limit: int) -> list[Mutation]:
        if after_lsn < 0:
            raise InvalidArgument(f"log position {after_lsn} is negative; positions start at 0")
        if not 1 <= limit <= LOG_READ_RECORDS_MAX:
            raise InvalidArgument(f"log read limit {limit} is out of range; use 1 to {LOG_READ_RECORDS_MAX}")
        return [decode_log_entry(row) for row in self.backend.read_log(after_lsn, limit)]

    def last_lsn(self) -> int:
        return self.backend.last_lsn()

    def writers(self) -> list[str]:
        return [self.node_id, *self.backend.other_writer_ids()]

    def inbound_position(self, source_node_id: str) -> int:
        return self.backend.inbound_position(source_node_id)

    def outbound_acks(self) -> dict[str, int]:
        return self.backend.outbound_acks()

    def subject_keys(self, subject_id: str) -> list[tuple[str, str]]:
        return self.backend.subject_keys(subject_id)

    def namespaces(self) -> list[str]:
        return self.backend.namespaces()

    def counts(self) -> StoreCounts:
        return self.backend.counts()

    def get_meta(self, name: str) -> bytes | None:
        check_meta_name(name)
        return self.backend.get_meta(name)

    def blocked_subjects(self) -> dict[str, str]:
        """Every blocked subject digest and the erasure request that blocked it."""
        return self.backend.blocked_subjects()

    def snapshot(self) -> AbstractContextManager[Iterator[SnapshotRow]]:
        """Every stored key state as of one moment, in (namespace, key) order (for backups)."""
        return self.backend.snapshot()

    def ping(self) -> None:
        self.backend.ping()

    def close(self) -> None:
        self.backend.close()


def check_identity(node_id: str, region: str) -> None:
    check_writer_id(node_id)
    if not region:
        raise InvalidArgument("region is empty; a storage engine belongs to one region")


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string that starts with prefix (None when there is
    none). Both backends compare text as UTF-8 bytes, which orders like code points, like Python."""
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


def decode_state(namespace: str, key: str, blob: bytes) -> KeyState:
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


def _state_row(
    namespace: str, key: str, state: KeyState, encoded: tuple[Version, record_pb2.RecordVersion] | None = None
) -> StateRow:
    """The row a key state is stored as (encoded: a version's protobuf form already made)."""
    versions = state.versions
    if len(versions) == 1:
        # The common case (a new key, or a write that superseded every version): the sets and
        # sorts below of one version, without building them.
        only = versions[0]
        live = not only.tombstone
        subjects: tuple[str, ...] = (only.subject_id,) if only.subject_id else ()
        classes: tuple[int, ...] = (int(only.classification),)
    else:
        live = state.has_live()
        subjects = tuple(sorted({v.subject_id for v in versions if v.subject_id}))
        classes = tuple(sorted({int(v.classification) for v in versions}))
    return StateRow(namespace, key, key_state_to_bytes(state, encoded), live, subjects, classes)


def decode_log_entry(row: LogRow) -> Mutation:
    try:
        mutation = mutation_from_bytes(row.mutation)
    except (DecodeError, DomicileError) as error:
        raise DataCorruption(
            f"change-log entry {row.lsn} ({row.namespace}/{row.key}) cannot be decoded ({error})"
        ) from None
    if not mutation.version.checksum_ok():
        raise DataCorruption(
            f"change-log entry {row.lsn} ({row.namespace}/{row.key}) failed its sha256 checksum; "
            "the node needs repair from a replica or backup"
        )
    return mutation


def check_encodable(what: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(
            f"a namespace, key or prefix is not valid Unicode text ({what} contains a lone surrogate)"
        ) from None


def check_text(what: str, text: str) -> None:
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


def check_meta_name(name: str) -> None:
    if not name or len(name) > META_NAME_CHARS_MAX:
        raise InvalidArgument(f"meta name {name!r} must be 1 to {META_NAME_CHARS_MAX} characters")
    check_text("meta name", name)


def _replay(write: LocalWrite, mark: RequestMark, writer: str) -> Committed:
    """The answer to a retry: the version the first attempt made (its dot, HLC and position),
    with the value and fields of this attempt (a retry sends the same ones). Its context names
    that version only, so a write passing it back supersedes exactly what the client wrote.
    The position is this writer's log's only when this writer made the version: another
    daemon over the same database stores its marks in the shared key state with positions of
    its own log, and a version first written elsewhere has none here (0)."""
    version = Version(
        dot=mark.dot,
        value=bytes(write.value),
        hlc=mark.hlc,
        tombstone=write.tombstone,
        content_type=write.content_type,
        subject_id=write.subject_id,
        subject_jurisdiction=write.subject_jurisdiction,
        classification=Classification(write.classification),
        checksum=causality.sha256(write.value),
        request_id=write.request_id,
    )
    context = CausalContext.of(dots=[mark.dot])
    lsn = mark.lsn if mark.dot.node_id == writer else 0
    mutation = Mutation(write.namespace, write.key, context, version, lsn, mark.dot.node_id)
    return Committed(
        mutation=mutation,
        state=KeyState((version,), context),
        had_live=mark.had_live,
        conflict=False,
        replayed=True,
    )


def _local_write_error(write: LocalWrite) -> DomicileError | None:
    try:
        _check_local_write(write)
    except DomicileError as error:
        return error
    return None


def _check_local_write(write: LocalWrite) -> None:
    check_namespace_name(write.namespace)
    check_text("key", write.key)
    check_request_id(write.request_id)
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
    check_text("key", m.key)
    check_request_id(m.version.request_id)
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
