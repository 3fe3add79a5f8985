"""The newest change-log entries, in memory, so that replication senders close behind the log
read them without a store read and without a hop off the event loop.

The group committer appends every committed local write here on its writer thread, after the
transaction has committed and before any writer hears back (so a sender woken by the commit
finds it). Remote applies do not append to the change log, and every local write (Puts,
Deletes, erasure and retention tombstones) is committed by GroupCommitter.submit, so the tail
sees every change-log entry in the order of its positions. The entries are the mutations as
stored (sealed values): what StorageEngine.read_log would return for the same positions.

The tail holds a contiguous run of positions (first, last] and knows `last`, the highest
committed position. A reader asking for what follows a position the run does not start at
or after (a target far behind, a node just restarted, entries evicted) gets None and reads the
store instead. Should positions ever arrive with a hole, the tail drops what it holds and keeps
only what follows the hole: it may cover less, never wrongly.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from domicile.causality import Mutation
from domicile.errors import InvalidArgument

# What one entry costs beyond its variable-length fields (the Mutation, Version, Dot and context
# objects). tracemalloc shows about 640 bytes for a small record; rounded up, so that the byte
# bound stays an upper bound with larger contexts.
ENTRY_OVERHEAD_BYTES = 1024
# The list keeps evicted slots until they are this many and at least half of it, then drops
# them in one move (amortised O(1) per entry, and slicing stays a plain list slice).
_COMPACT_AT = 4096


def entry_bytes(m: Mutation) -> int:
    """What one entry counts toward the tail's byte bound."""
    v = m.version
    return (
        ENTRY_OVERHEAD_BYTES
        + len(v.value)
        + len(m.key)
        + len(m.namespace)
        + len(v.content_type)
        + len(v.subject_id)
        + len(v.subject_jurisdiction)
    )


class LogTail:
    """The last committed change-log entries, up to `records_max` entries and `bytes_max` bytes
    (entry_bytes). Appended to by one writer thread, read from any thread; each call holds the
    lock only for list operations."""

    def __init__(self, *, records_max: int, bytes_max: int, after_lsn: int | None = None) -> None:
        """`after_lsn` is the store's last position when no writer is running yet (the tail then
        covers it, with nothing after); None when unknown (the tail covers nothing until the
        first append)."""
        for name, value in (("records_max", records_max), ("bytes_max", bytes_max)):
            if value < 1:
                raise InvalidArgument(f"log tail {name} is {value}; it must be at least 1")
        if after_lsn is not None and after_lsn < 0:
            raise InvalidArgument(f"log position {after_lsn} is negative; positions start at 0")
        self.records_max = records_max
        self.bytes_max = bytes_max
        self._lock = threading.Lock()
        # Held entries are _entries[_head:], at positions _last - held + 1 .. _last; _weights
        # holds their entry_bytes, so that evicting many is one slice sum.
        self._entries: list[Mutation] = []
        self._weights: list[int] = []
        self._head = 0
        self._bytes = 0
        self._last = after_lsn

    @property
    def last_lsn(self) -> int | None:
        """The highest committed position the tail has seen (or was started after); None when
        it knows none."""
        return self._last

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries) - self._head

    def append(self, mutations: Sequence[Mutation]) -> None:
        """Adds committed entries, in position order. Called on the writer thread, after the
        transaction that wrote them has committed."""
        if not mutations:
            return
        # Only a trailing run without holes can follow what is held (commit_local gives a
        # batch consecutive positions, so this is the whole batch).
        start = len(mutations) - 1
        while start > 0 and mutations[start - 1].lsn == mutations[start].lsn - 1:
            start -= 1
        run = mutations[start:] if start else mutations
        weights = [entry_bytes(m) for m in run]
        with self._lock:
            if start or self._last is None or run[0].lsn != self._last + 1:
                self._clear()
            self._entries.extend(run)
            self._weights.extend(weights)
            self._bytes += sum(weights)
            self._last = run[-1].lsn
            over = len(self._entries) - self._head - self.records_max
            if over > 0:
                self._bytes -= sum(self._weights[self._head : self._head + over])
                self._head += over
            while self._bytes > self.bytes_max and self._head < len(self._entries):
                self._bytes -= self._weights[self._head]
                self._head += 1
            if self._head >= _COMPACT_AT and 2 * self._head >= len(self._entries):
                del self._entries[: self._head]
                del self._weights[: self._head]
                self._head = 0

    def read(self, after_lsn: int, limit: int) -> tuple[list[Mutation], int] | None:
        """Up to `limit` entries with positions after `after_lsn`, in order, and the last
        committed position; exactly what read_log(after_lsn, limit) returns. None when the tail
        does not hold the entries right after `after_lsn` (read the store instead)."""
        with self._lock:
            last = self._last
            if last is None or after_lsn > last:
                return None
            held = len(self._entries) - self._head
            skip = after_lsn - (last - held)
            if skip < 0:
                return None
            start = self._head + skip
            return self._entries[start : start + max(limit, 0)], last

    def forget(self) -> None:
        """Drops everything, the last position too: until the next append, every read goes to
        the store."""
        with self._lock:
            self._clear()
            self._last = None

    def _clear(self) -> None:
        self._entries = []
        self._weights = []
        self._head = 0
        self._bytes = 0
