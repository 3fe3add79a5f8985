"""The StorageEngine protocol. Every engine (SQLite by default, or MongoDB) implements it and
passes tests/contract. Both are the engine core (node.engine.core) over a backend
(node.engine.backend); the causal logic is domicile.causality and is shared, so two engines given
the same calls hold the same states.

Threading: commit_local and apply_remote are called from one writer thread at a time (see
group_commit.GroupCommitter); the read methods may be called from any thread concurrently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from domicile.audit import AuditEntry
from domicile.causality import CausalContext, Dot, KeyState, Mutation, Version
from domicile.errors import DomicileError, FailedPrecondition, Unavailable
from domicile.model import Classification
from domicile.v1 import record_pb2

# The most keys one get_many reads; callers with more read them in pages.
GET_MANY_KEYS_MAX = 10_000


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and a write (like
# its Committed) is built once per record on the hot path. Treat them as immutable all the same:
# dataclasses.replace makes a changed copy.
@dataclass(slots=True)
class LocalWrite:
    """A write accepted by this node (policy and input already checked by the caller)."""

    namespace: str
    key: str
    value: bytes = b""
    tombstone: bool = False
    content_type: str = ""
    # The context this write supersedes; None means every version this node holds for the key.
    supersedes: CausalContext | None = None
    subject_id: str = ""
    subject_jurisdiction: str = ""
    classification: Classification = Classification.UNSPECIFIED
    # The most versions the write may leave on the key (0: no cap). A write that would leave
    # more than the key holds now and more than this is refused; one that does not add (its
    # context covers a version) is always accepted, so a key past the cap can be resolved.
    siblings_max: int = 0
    # The client's id of the logical write ("": none). When the key remembers it, the write is
    # not made again: the result is the version its first attempt made (Committed.replayed).
    request_id: str = ""
    # With request_id: what the write is, as the client sent it (request_digest() of its kind,
    # value and facts; the value here may be sealed). A later write with the same id is answered
    # as a retry only if it is the same write, and refused otherwise. b"": not compared.
    request_digest: bytes = b""
    # What a read answers at most for one record (read_record_bytes_max; 0: not checked): a
    # write that would add a version past it is refused, so that the key stays readable, and
    # with its context resolvable.
    read_bytes_max: int = 0
    # With read_bytes_max: what a stored version's value weighs as a read answers it (a sealed
    # one opened); None: as stored.
    answered_value_bytes: Callable[[Version], int] | None = None
    # The write's audit entry (unnumbered), committed with the write in the store's audit outbox
    # when the engine carries_audit; None when the caller waited for it in the audit log.
    audit: AuditEntry | None = None
    # Asked on the writer thread with the key's state just before the write is built: a reason
    # ("" for none) refuses it with FailedPrecondition and nothing is written. For a write
    # decided on a state read earlier (a retention expiry) that must not land on a newer one.
    precondition: Callable[[KeyState | None], str] | None = None

    @classmethod
    def deleting(
        cls, namespace: str, key: str, newest: Version, supersedes: CausalContext | None
    ) -> LocalWrite:
        """A tombstone about what `newest` is about (subject, jurisdiction, classification), so
        it is placed and replicated wherever the record went."""
        return cls(
            namespace=namespace,
            key=key,
            tombstone=True,
            supersedes=supersedes,
            subject_id=newest.subject_id,
            subject_jurisdiction=newest.subject_jurisdiction,
            classification=newest.classification,
        )


@dataclass(slots=True)
class Committed:
    """A durably committed local write."""

    mutation: Mutation  # carries its lsn and the version with its dot and HLC
    state: KeyState  # the key's state after the write
    had_live: bool  # a live version existed before the write (Delete reports it)
    conflict: bool  # the write left concurrent versions standing
    # A retry answered with its first attempt's version: nothing was written (no log entry);
    # `state` then holds that version alone and `mutation.lsn` is 0 unless it was written here.
    replayed: bool = False
    # The protobuf form the engine encoded `mutation.version` in for its change-log entry, with
    # the version it was made from: an answer whose version is that very object copies it
    # instead of encoding it again (an answer with another version, such as the unsealed value
    # of a sealed write, encodes its own).
    encoded: tuple[Version, record_pb2.RecordVersion] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ApplyOutcome:
    """What apply_remote did with a batch."""

    applied: tuple[Mutation, ...]  # changed the state
    duplicates: int  # already known or superseded
    conflicts: int  # left concurrent versions standing
    position: int  # the source position now persisted
    # Per applied mutation, the versions its key holds after it (the sibling cap's metric).
    versions_after: tuple[int, ...] = ()
    # The apply's audit entries the commit carried, with their received numbers (in order).
    received: tuple[tuple[int, AuditEntry], ...] = ()


class CommitOutcomeUnknown(Unavailable):
    """A write transaction whose commit was sent but never answered: it may be durable. `keys`
    are the (namespace, key) states it wrote, which whoever keeps copies of key states (the read
    cache) must take as changed, since the engine cannot say whether they did."""

    def __init__(self, message: str, keys: Iterable[tuple[str, str]]) -> None:
        super().__init__(message)
        self.keys = tuple(dict.fromkeys(keys))


class StateTooLarge(FailedPrecondition):
    """A key state the backend cannot store, whatever it is asked again: past MongoDB's document
    limit (16 MiB), which siblings of large values reach. Names the key, refused alone."""

    def __init__(self, message: str, namespace: str, key: str) -> None:
        super().__init__(message)
        self.namespace = namespace
        self.key = key


@dataclass(frozen=True)
class StoreCounts:
    records: int  # keys with at least one live version
    tombstones: int  # keys whose versions are all tombstones


@dataclass(frozen=True)
class LogStart:
    """Every change-log entry at or before `lsn` is truncated; `hlc` is that entry's HLC (every
    write this node made up to it carries an HLC at most this, the log being in HLC order)."""

    lsn: int = 0
    hlc: int = 0


class StorageEngine(Protocol):
    node_id: str
    region: str
    # The highest change-log position whose carried audit entry the audit log holds: commits
    # drop outbox rows up to it (set by the daemon; 0 keeps every row).
    audit_settled: Callable[[], int]
    # The highest received number (carry_received) whose entry the audit log holds.
    audit_received_settled: Callable[[], int]

    @property
    def carries_audit(self) -> bool:
        """Whether a commit can carry its writes' audit entries (LocalWrite.audit)."""
        ...

    def audit_outbox(self, after_lsn: int) -> list[tuple[int, bytes]]:
        """(position, unnumbered entry) carried by commits after after_lsn, in position order."""
        ...

    def commit_local(
        self, writes: Sequence[LocalWrite], stamp: Callable[[], int]
    ) -> list[Committed | DomicileError]:
        """Commits the writes in one durable transaction, in order. Each gets the next dot for
        its key, an HLC from `stamp()` and the next change-log position, in the same
        transaction as its key state. A write that cannot be applied gets a DomicileError in
        its slot and changes nothing; the others still commit."""
        ...

    def apply_remote(
        self,
        source_node_id: str,
        mutations: Sequence[Mutation],
        through_lsn: int,
        audit: Sequence[AuditEntry] = (),
    ) -> ApplyOutcome:
        """Merges mutations received from source_node_id and persists the source position
        `through_lsn`, in one durable transaction. Applying a mutation twice changes nothing.
        Remote mutations are not appended to this node's change log (each node ships only the
        writes it accepted itself). `audit`: unnumbered entries the transaction carries (only
        when carries_audit), returned numbered in ApplyOutcome.received."""
        ...

    def audit_received(self, after_seq: int) -> list[tuple[int, bytes]]:
        """(received number, unnumbered entry) carried by applies after after_seq, in order."""
        ...

    def last_audit_received(self) -> int:
        """The highest received number ever given (0: none)."""
        ...

    def withdraw(self, namespace: str, key: str, dots: Sequence[Dot]) -> KeyState | None:
        """Removes those versions from this store only, nothing logged or replicated (a copy the
        policy no longer allows here); the new state, or None when none was there."""
        ...

    def get(self, namespace: str, key: str) -> KeyState | None:
        """The stored state of a key (tombstones included), or None when never written."""
        ...

    def get_many(self, namespace: str, keys: Sequence[str]) -> dict[str, KeyState]:
        """The stored states of the keys that were ever written (tombstones included), by key;
        keys never written are absent. One call instead of a get per key, for callers that
        loop over keys. At most GET_MANY_KEYS_MAX keys."""
        ...

    def get_many_stored(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        """get_many's states in their stored form (a protobuf KeyState), neither decoded nor
        checked: for a caller that reads a part of each state, and checks what it reads
        (node.replication.digest_tree). At most GET_MANY_KEYS_MAX keys."""
        ...

    def scan(self, namespace: str, prefix: str, start_after: str, limit: int) -> list[tuple[str, KeyState]]:
        """Keys of the namespace with a live version, starting with prefix, after start_after,
        in key order, at most limit."""
        ...

    def subject_keys(self, subject_id: str) -> list[tuple[str, str]]:
        """(namespace, key) of every key that holds or held a version about this data subject
        (tombstones included), sorted."""
        ...

    def namespaces(self) -> list[str]:
        """Every namespace with a stored key (live or tombstoned), sorted; the compliance
        scanner walks these, including namespaces the configuration no longer lists."""
        ...

    def read_log(self, after_lsn: int, limit: int) -> list[Mutation]:
        """Change-log entries with lsn > after_lsn in lsn order, at most limit."""
        ...

    def last_lsn(self) -> int:
        """Highest change-log position; 0 when empty."""
        ...

    def writers(self) -> list[str]:
        """The nodes that issue dots from this store, this one first: over a shared MongoDB
        database the region's other daemons too (each key state holds their counters)."""
        ...

    def inbound_position(self, source_node_id: str) -> int:
        """The source position persisted by the last apply_remote from that source; 0 if none."""
        ...

    def record_outbound_ack(self, target_node_id: str, lsn: int) -> None:
        """Persists the highest position target_node_id has acknowledged (never moves back)."""
        ...

    def outbound_acks(self) -> dict[str, int]:
        """Every target's acknowledged position."""
        ...

    def counts(self) -> StoreCounts: ...

    def get_meta(self, name: str) -> bytes | None:
        """A small named blob (the cached topology, the node id)."""
        ...

    def put_meta(self, name: str, value: bytes) -> None: ...

    def block_subject(self, digest: str, request_id: str) -> None:
        """Records an erased data subject (the keyed hash of its id) and the erasure request
        that erased it, for good. Each subject is a row of its own."""
        ...

    def blocked_subjects(self) -> dict[str, str]:
        """Every erased subject's digest and the request that erased it."""
        ...

    def snapshot(self) -> AbstractContextManager[Iterator[tuple[str, str, bytes]]]:
        """(namespace, key, stored state bytes) of every key as of one moment, in key order:
        a consistent view for backups while writes go on."""
        ...

    # -- bounded growth (node.replication.truncation, tombstone_gc, bootstrap) -----------------

    def log_start(self) -> LogStart:
        """Where the change log starts: the last truncated position and its entry's HLC."""
        ...

    def truncate_log(self, through_lsn: int, limit: int) -> LogStart:
        """Deletes change-log entries up to through_lsn, at most limit of them; returns the new start."""
        ...

    def snapshot_at(self) -> AbstractContextManager[tuple[int, Iterator[tuple[str, str, bytes]]]]:
        """Like snapshot, with this node's change-log position the states are consistent with."""
        ...

    def states_after(self, namespace: str, after_key: str, limit: int) -> list[tuple[str, KeyState]]:
        """Keys of the namespace after after_key, tombstoned ones included, in key order."""
        ...

    def dead_states(self, after: tuple[str, str], limit: int) -> list[tuple[str, str, KeyState]]:
        """Key states with no live version after (namespace, key), in that order."""
        ...

    def purged_before(self) -> int:
        """The HLC before which tombstones may have been purged here (0: none)."""
        ...

    def purge_tombstones(
        self, namespace: str, keys: Sequence[str], purgeable: Callable[[str, KeyState], bool], cutoff_hlc: int
    ) -> int:
        """Deletes the keys' states that still have no live version and pass purgeable."""
        ...

    def prune_versions(self, namespace: str, drops: Mapping[str, Collection[Dot]]) -> int:
        """Removes the given versions (and their dots from the contexts); empty keys go."""
        ...

    def ping(self) -> None:
        """Raises Unavailable when the store cannot be reached now (a database server that is
        down); the node reports NOT_SERVING until it answers again."""
        ...

    def close(self) -> None: ...


def request_digest(
    *,
    tombstone: bool,
    value: bytes,
    content_type: str,
    subject_id: str,
    subject_jurisdiction: str,
    classification: int,
) -> bytes:
    """What a client write is, for telling a retry (the same write again) from another write
    that reuses its request id: its kind, value and facts as the client sent them. A value about
    a data subject counts by its length alone: the digest is stored in the clear beside the
    sealed value, and must not let anyone confirm a guess of the value once the subject's key is
    destroyed (crypto-shredding)."""
    digest = hashlib.sha256(b"put" if not tombstone else b"delete")
    for text in (content_type, subject_id, subject_jurisdiction):
        encoded = text.encode()
        digest.update(len(encoded).to_bytes(4, "big") + encoded)
    digest.update(classification.to_bytes(4, "big"))
    digest.update(len(value).to_bytes(8, "big"))
    if not subject_id:
        digest.update(hashlib.sha256(value).digest())
    return digest.digest()[:16]


# What a version costs in an answer besides its value and text fields (dot, HLC, checksum,
# classification, field tags), and what a context entry costs, counted twice (plain and token).
VERSION_OVERHEAD_BYTES = 96
CONTEXT_ENTRY_BYTES = 2 * (12 + 63)
ANSWER_OVERHEAD_BYTES = 256


def answer_bytes(
    key: str,
    state: KeyState | None,
    versions: tuple[Version, ...],
    value_bytes: Callable[[Version], int] | None = None,
) -> int:
    """About what one record weighs in a Get answer or a scan page (an upper bound).
    `value_bytes`: each value's weight as answered, when `versions` are as stored (sealed)."""
    weight = ANSWER_OVERHEAD_BYTES + 2 * len(key.encode("utf-8", "surrogatepass"))
    for v in versions:
        value = value_bytes(v) if value_bytes is not None else len(v.value)
        weight += VERSION_OVERHEAD_BYTES + value + len(v.content_type) + len(v.subject_id)
        weight += len(v.subject_jurisdiction) + len(v.origin_region) + len(v.dot.node_id)
    if state is not None:
        weight += CONTEXT_ENTRY_BYTES * (len(state.context.vv) + len(state.context.dots))
    return weight
