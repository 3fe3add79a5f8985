"""What this node knows about its cache's coherence, in memory: the change sequence, the keys
whose invalidation has not landed in Redis yet, and the generation (key prefix) in use.

Why no read ever returns a state older than the last one this node acknowledged
===============================================================================

Names. Every local commit and every replicated apply that changed key states is one *change*.
The writer thread calls `changed(keys)` after the change is durable and before anyone hears
back; that gives it the next *sequence number* s (this process counts them from 0; they order
changes like the writer thread does, so a later change has a larger s). Redis holds, per
generation, entries `full(state)` or `absent` (the key was never written), *markers* `m<v>`,
and one high-water mark `hw`. One thread (the invalidator) sends the changes to Redis, in
sequence order, each as one Lua script that deletes the changed keys' entries and sets
`hw := s`. A change has *landed* once its script has run.

1. Dirty keys. `changed` puts each key in `dirty` with its s before the change is
   acknowledged; the key leaves `dirty` only when the invalidator has seen a change with that
   s (or later) land. A read of a dirty key does not use the cache at all, and a read that
   found an entry checks again afterwards (`still_valid`). So a change that has not landed
   is never hidden by an older entry.
   Before that, `changing` marks the keys a commit is about to change, before the commit: a
   read of the engine (a scan, a read that does not use the cache) can see the commit before
   `changed` runs, and a read through the cache after it must not then return the older
   entry. That mark is kept apart from `dirty`, cleared by no landing and kept by a new
   generation, until `settled` (after `changed` has put the keys the commit changed in
   `dirty`). So a change that a read of the store returned is marked from before its commit
   until it lands, and once landed no older state is filled (3): no read through the cache
   returns a state older than one a read of this node's store returned before it began.
   Another daemon's changes over a shared store are marked only when its change stream brings
   them (see the end).
2. Fills need a lease. On a miss, the lookup script creates a marker `m<hw>` when the key has
   no entry (atomically, with the hw of that moment), and the reader takes `r`, the sequence
   number of the last change published, *before* it reads the engine: the state S it then
   reads contains every change up to r. The fill script stores S only onto a marker whose
   version is at most r (a "fill refused as stale" otherwise), and never onto a full entry,
   an absent entry, or nothing.
3. Invalidate-then-fill. Take any change s of the key that landed before the fill ran. If
   s <= r, S contains it. If s > r, its script deleted the key's entry, so the marker the fill
   found was created after s landed, when hw >= s > r: the fill is refused. Hence a fill never
   stores a state older than a change that has landed, and changes that have not landed are
   covered by 1. Two readers racing, a fill racing an invalidation in either order, and a fill
   of a state read before an invalidation all fall under this argument.
4. Lost entries are safe. A marker that expires or is evicted makes its fill find nothing
   (refused); an evicted entry is a miss. If hw itself is lost (evicted, flushed), the lookup
   creates no marker, so nothing is filled until the next change or heartbeat (a change of no
   keys, sent every heartbeat) sets it again, in sequence order.
5. Unknown outcomes change the generation. When a script fails or times out, the invalidator
   cannot know whether it landed, so it moves to a fresh generation (a new random key prefix):
   the old entries can no longer be read and expire by their TTL, `dirty` is emptied (the new
   generation has no entries), and the new generation is *ready* only once a change (or
   heartbeat) has landed in it and set its hw. Until then reads do not use the cache.
6. A Redis that lost writes. The invalidation script returns the hw it found. Below what this
   node last landed (or missing), Redis restarted from an old snapshot, failed over to a replica
   behind, or was flushed: the generation is abandoned as in 5. A read that fails marks the
   cache suspect; reads skip it until the invalidator has landed a heartbeat taken after the
   failure, which performs this check (one taken before it checked Redis as it was then).
   Residual: a Redis that restarts from a snapshot between two heartbeats and whose
   connections all survive can serve from the snapshot until the next heartbeat
   (at most `heartbeat_s`); run the cache without persistence (the managed server does).

A restarted node starts in a new generation, so nothing the previous process cached is read.
Several daemons over one shared store (MongoDB) each keep their own prefix; the changes the
others make come from the store's change stream and are published here like this node's own,
before a read can see them through the cache (node/cache/others.py says when that is).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

Key = tuple[str, str]


def new_generation() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Ticket:
    """Permission to use the cache for one key in one generation."""

    generation: str


@dataclass
class Batch:
    """Changes to send to Redis as one script: every key and the largest sequence number."""

    generation: str
    seq: int
    keys: list[Key] = field(default_factory=list)
    # How many times the cache had been distrusted when the batch was taken: only a batch
    # taken after the last distrust checked Redis as it is since that failure.
    distrusts: int = 0


class Coherence:
    """Thread-safe; `changing`, `changed` and `settled` run on the writer thread, reads on the
    offload threads, the rest on the invalidator thread."""

    def __init__(self, generation: str | None = None) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.generation = generation or new_generation()
        self._ticket = Ticket(self.generation)  # the generation's one ticket (replaced with it)
        self._seq = 0
        self._dirty: dict[Key, int] = {}
        # The keys of the commit in progress (`changing`): apart from `dirty`, so that ending
        # the commit never ends the mark of an earlier change that has not landed yet.
        self._committing: set[Key] = set()
        self._pending: dict[Key, None] = {}
        self._heartbeat_due = True  # the first generation needs its hw
        self.ready = False
        self.suspect = False
        self._distrusts = 0
        self.last_landed = 0
        self.rotations = 0

    # -- the writer thread --------------------------------------------------------------------

    def changing(self, keys: Iterable[Key]) -> None:
        """These keys are about to change (before the commit): reads of them skip the cache
        until `changed` has numbered the change and it has landed, or `settled` says the key
        did not change after all."""
        with self._lock:
            self._committing.update(keys)

    def settled(self, keys: Iterable[Key]) -> None:
        """The commit announced by `changing` is over, and `changed` has numbered the keys it
        changed: their marks are in `dirty` now, until they land."""
        with self._lock:
            self._committing.difference_update(keys)

    def changed(self, keys: Iterable[Key]) -> None:
        """A durable change of these keys, before it is acknowledged."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            for k in keys:
                self._dirty[k] = seq
                self._pending[k] = None
            self._wake.notify()

    # -- readers --------------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The last change published (read it before reading the engine: the state read then
        contains every change up to it)."""
        return self._seq

    def ticket(self, key: Key) -> Ticket | None:
        """None when this read must not use the cache: the key has a change not landed yet.

        Without the lock (a read of each hit takes a ticket and checks it): the generation's
        ticket is read before the key's marks, each read atomic. A rotation between the two
        can only hand out the old generation's ticket, and `still_valid` refuses that one. The
        commit's mark is read before the dirty one (see `_marked`)."""
        ticket = self._ticket
        if self._marked(key):
            return None
        return ticket

    def _marked(self, key: Key) -> bool:
        """Whether a commit of the key is in progress or a change of it has not landed, without
        the lock. A key's mark moves from `_committing` to `_dirty` (`changed` before
        `settled`), so `_committing` is read first: a key found in neither was, when
        `_committing` was read, either not being committed (a commit begun since began after
        this read) or already in `_dirty`, where only its landing ends it. Read the other way
        round, a whole commit could pass between the two reads, the key being in each set
        only while the other was read."""
        return key in self._committing or key in self._dirty

    @property
    def usable(self) -> bool:
        return self.ready and not self.suspect

    def still_valid(self, ticket: Ticket, key: Key) -> bool:
        """An entry found with this ticket may be served: same generation, no change since.

        Without the lock, the marks are read first (`_marked`), then the generation: a
        generation is never used again once left, so finding the ticket's one second means it
        was in force at the first read too, and the key was not marked in it then. That is the
        answer the lock would give at that moment (a change marked later began after it)."""
        if self._marked(key):
            return False
        return ticket.generation == self.generation

    def distrust(self) -> None:
        """A cache call failed: reads skip the cache until a heartbeat taken after this lands."""
        with self._lock:
            self.suspect = True
            self._distrusts += 1
            self._heartbeat_due = True
            self._wake.notify()

    # -- the invalidator thread ----------------------------------------------------------------

    def take(self, timeout_s: float) -> Batch:
        """The changes not sent yet, merged, with the last sequence number (every change up to it
        is in this batch or an earlier one); waits up to timeout_s for a change or a heartbeat
        request, and returns a batch of no keys (a heartbeat) when none came."""
        with self._lock:
            if not self._pending and not self._heartbeat_due:
                self._wake.wait(timeout_s)
            batch = Batch(self.generation, self._seq, list(self._pending), self._distrusts)
            self._pending.clear()
            self._heartbeat_due = False
            return batch

    def request_heartbeat(self) -> None:
        with self._lock:
            self._heartbeat_due = True
            self._wake.notify()

    def landed(self, batch: Batch, hw_before: int | None) -> bool:
        """The batch's script ran and found `hw_before`. False (and a new generation) when
        Redis lost what this node wrote to it."""
        with self._lock:
            if batch.generation != self.generation:
                return True
            if self.ready and (hw_before is None or hw_before < self.last_landed):
                self._rotate()
                return False
            for k in batch.keys:
                if self._dirty.get(k, batch.seq + 1) <= batch.seq:
                    del self._dirty[k]
            self.last_landed = max(self.last_landed, batch.seq)
            self.ready = True
            if batch.distrusts == self._distrusts:
                # Else a failure came after the batch was taken: its heartbeat, already asked
                # for, checks Redis again and ends the distrust.
                self.suspect = False
            return True

    def failed(self, batch: Batch) -> bool:
        """The batch's script may or may not have run: move to a new generation. True when the
        generation given up was in use (had landed a batch)."""
        with self._lock:
            if batch.generation != self.generation:
                return False
            was_ready = self.ready
            self._rotate()
            return was_ready

    def abandon(self) -> None:
        """Gives up the generation from any thread (the state of a change is unknown)."""
        with self._lock:
            self._rotate()
            self.suspect = True
            self._wake.notify()

    def _rotate(self) -> None:
        self.generation = new_generation()
        self._ticket = Ticket(self.generation)
        self.rotations += 1
        # A commit in progress may already be visible in the engine: its keys stay out of
        # the new generation's reads too, until `settled` (`_committing` is kept).
        self._dirty.clear()
        self._pending.clear()
        self.ready = False
        self.last_landed = 0
        self._heartbeat_due = True

    def wake(self) -> None:
        with self._lock:
            self._wake.notify_all()

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)
