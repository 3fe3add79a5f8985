"""The backend interface: what the engine core (node.engine.core) needs from a database.

A backend stores bytes and numbers; it knows nothing of causality, dots or checksums. The core
decides what to write, the backend makes it durable. Every write runs through `write(fn)`:
the backend opens one durable transaction, hands `fn` a WriteTx to read and write through, and
commits. A backend may run `fn` more than once (a transaction that hit a write conflict or a
transient error is retried from the start), so `fn` keeps no state across attempts: positions and
results are rebuilt on each attempt from what the transaction reads.

Threading: `write` is called from one thread at a time per engine (the group committer); the
read methods from any thread, concurrently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

from node.engine.base import StateTooLarge, StoreCounts

T = TypeVar("T")


@dataclass
class Totals:
    """One node's running totals, as the current write transaction moves them. records and
    tombstones are what this node's transactions added (a backend shared by several nodes sums
    them); last_lsn is this node's change-log position."""

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


class StateRow(NamedTuple):
    """A key state as stored: the protobuf bytes plus the fields indexes need."""

    namespace: str
    key: str
    state: bytes
    live: bool
    # Every data subject a version of the state is about; the subject index keeps a subject
    # once it was seen for the key, even after the versions about it are superseded.
    subjects: tuple[str, ...]
    # The classifications of its versions (a field a backend may index).
    classifications: tuple[int, ...] = ()


# (namespace, key, stored state bytes)
SnapshotRow = tuple[str, str, bytes]


class LogRow(NamedTuple):
    """A change-log entry as stored. Named tuples (not dataclasses), like StateRow: a write
    makes one of each per record, and a tuple is what a database driver takes as the row."""

    lsn: int
    namespace: str
    key: str
    mutation: bytes


class WriteTx(Protocol):
    """One write transaction. Reads see the transaction's own earlier writes."""

    def totals(self) -> Totals: ...

    def load_states(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored states of the keys that exist, by key (any number of keys)."""
        ...

    def store_states(self, rows: Sequence[StateRow]) -> None: ...

    def append_log(self, rows: Sequence[LogRow]) -> None: ...

    def store_totals(self, totals: Totals) -> None: ...

    def raise_inbound(self, source: str, lsn: int) -> int:
        """Moves the source's position up to lsn (never back); returns the position now stored."""
        ...

    def raise_outbound(self, target: str, lsn: int) -> None: ...

    def put_meta(self, name: str, value: bytes) -> None: ...

    def store_max(self, name: str) -> int:
        """A number of the store that only grows (0 until raised), one for every node writing to
        the store: a dot floor, the purge point of tombstones (node.engine.core)."""
        ...

    def raise_store_max(self, name: str, value: int) -> None:
        """Moves the named number up to value (never back)."""
        ...

    def block_subject(self, digest: str, request_id: str) -> None: ...

    def other_writers(self) -> list[str]:
        """The ids of the other nodes that issue dots from this store (the other daemons of a
        region over one MongoDB database; none over SQLite): a key's counters of theirs must
        not fall either when versions leave it."""
        ...

    def carry_audit(self, rows: Sequence[tuple[int, bytes]], settled_through: int) -> None:
        """Stores (change-log position, unnumbered audit entry) of this transaction's writes in
        the audit outbox, and drops the rows the audit log already holds (position <=
        settled_through). Only on a backend whose carries_audit is True."""
        ...

    def carry_received(self, bodies: Sequence[bytes], settled_through: int) -> list[int]:
        """Stores the unnumbered audit entries of this transaction's replicated apply, each
        under the next received number (never one given before), and drops the rows the audit
        log already holds (number <= settled_through). Returns the numbers, in order. Only on a
        backend whose carries_audit is True."""
        ...

    def delete_log(self, through_lsn: int) -> None:
        """Deletes this node's change-log entries at or before through_lsn (truncation)."""
        ...

    def delete_states(self, namespace: str, keys: Mapping[str, Sequence[str]]) -> None:
        """Deletes the key states (tombstone garbage collection, a bootstrap's pruning), each
        key with the data subjects its versions were about (their rows of the subject index)."""
        ...


class Backend(Protocol):
    # Whether write transactions can carry audit entries (carry_audit, read_audit_outbox).
    carries_audit: bool

    def read_audit_outbox(self, after_lsn: int) -> list[tuple[int, bytes]]:
        """The carried audit entries of positions after after_lsn, in position order."""
        ...

    def read_audit_received(self, after_seq: int) -> list[tuple[int, bytes]]:
        """The carried audit entries of replicated applies numbered after after_seq, in order."""
        ...

    def last_audit_received(self) -> int:
        """The highest number carry_received ever gave (0: none)."""
        ...

    def write(self, fn: Callable[[WriteTx], T]) -> T:
        """Runs fn in one durable transaction (possibly more than once, see the module doc)."""
        ...

    def load_states(self, namespace: str, keys: Sequence[str]) -> dict[str, bytes]: ...

    def state_too_large(self, row: StateRow) -> StateTooLarge | None:
        """The refusal store_states gives this row for its size (None: a row of its size is
        stored). The core asks it only of a key whose state the backend refused, to tell which
        of the key's writes in a commit fit (EngineCore.commit_local)."""
        ...

    def scan(
        self, namespace: str, lower: str, inclusive: bool, upper: str | None, limit: int
    ) -> list[tuple[str, bytes]]:
        """Live keys of the namespace from lower (inclusive or not) to upper (exclusive; None:
        no bound), in key order (code point order), at most limit."""
        ...

    def read_log(self, after_lsn: int, limit: int) -> list[LogRow]: ...

    def last_lsn(self) -> int: ...

    def other_writer_ids(self) -> list[str]:
        """WriteTx.other_writers, read outside a transaction."""
        ...

    def inbound_position(self, source: str) -> int: ...

    def outbound_acks(self) -> dict[str, int]: ...

    def subject_keys(self, subject_id: str) -> list[tuple[str, str]]: ...

    def namespaces(self) -> list[str]: ...

    def counts(self) -> StoreCounts: ...

    def get_meta(self, name: str) -> bytes | None: ...

    def store_max(self, name: str) -> int:
        """WriteTx.store_max, read outside a write."""
        ...

    def blocked_subjects(self) -> dict[str, str]: ...

    def snapshot(self) -> AbstractContextManager[Iterator[SnapshotRow]]:
        """Every stored key state as of one moment (for backups), in (namespace, key) order.
        The live flag and the subject index are derived from the states, so a restore rebuilds
        them."""
        ...

    def snapshot_at(self) -> AbstractContextManager[tuple[int, Iterator[SnapshotRow]]]:
        """Like snapshot, with this node's last change-log position read in the same read
        transaction: the states hold exactly the effects of the log up to that position (and
        whatever replicated applies had committed by then)."""
        ...

    def states_after(self, namespace: str, after_key: str, limit: int) -> list[tuple[str, bytes]]:
        """Keys of the namespace after after_key, tombstoned ones included, in key order, at most limit."""
        ...

    def dead_states(self, after: tuple[str, str], limit: int) -> list[SnapshotRow]:
        """Key states with no live version after (namespace, key), in that order, at most limit."""
        ...

    def ping(self) -> None:
        """Raises Unavailable when the database cannot be reached now."""
        ...

    def close(self) -> None: ...
