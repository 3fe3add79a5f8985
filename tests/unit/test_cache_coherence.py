"""The cache's in-memory coherence rules (node/cache/coherence.py), without Redis."""

from __future__ import annotations

from collections.abc import Callable

from node.cache.coherence import Coherence, Key

K1, K2 = ("ns", "a"), ("ns", "b")


def ready() -> Coherence:
    c = Coherence()
    assert c.landed(c.take(0), None)
    assert c.usable
    return c


def test_the_cache_is_unusable_until_a_batch_lands_in_its_generation() -> None:
    c = Coherence()
    assert not c.usable
    first = c.take(0)
    assert first.keys == [] and first.seq == 0
    assert c.landed(first, None) and c.usable


def test_a_changed_key_stays_dirty_until_its_latest_change_lands() -> None:
    c = ready()
    c.changed([K1])
    assert c.ticket(K1) is None and c.ticket(K2) is not None
    batch = c.take(0)
    assert batch.keys == [K1] and batch.seq == 1
    c.changed([K1])  # a later change of the same key, not in the batch taken
    assert c.landed(batch, 0)
    assert c.ticket(K1) is None, "the second change has not landed"
    later = c.take(0)
    assert later.seq == 2 and c.landed(later, 1)
    assert c.ticket(K1) is not None


def test_an_entry_found_before_a_change_is_not_served_after_it() -> None:
    c = ready()
    ticket = c.ticket(K1)
    assert ticket is not None and c.still_valid(ticket, K1)
    c.changed([K1])
    assert not c.still_valid(ticket, K1)


def test_a_failed_batch_abandons_the_generation_and_its_dirty_keys() -> None:
    c = ready()
    old = c.generation
    ticket = c.ticket(K2)
    c.changed([K1])
    batch = c.take(0)
    assert c.failed(batch), "the generation was in use"
    assert c.generation != old and not c.usable
    assert ticket is not None and not c.still_valid(ticket, K2)
    # Nothing can be cached in the new generation before its first batch lands, so the keys of
    # the failed batch need no invalidation there.
    assert c.ticket(K1) is not None
    again = c.take(0)
    assert again.generation == c.generation and again.seq == 1
    assert not c.failed(again), "a generation that never landed a batch was not in use"


def test_a_redis_that_lost_writes_is_abandoned() -> None:
    c = ready()
    c.changed([K1])
    assert c.landed(c.take(0), 0)
    gen = c.generation
    c.changed([K2])
    # The script found a mark below what this node had landed: Redis went back in time.
    assert not c.landed(c.take(0), 0)
    assert c.generation != gen and not c.usable
    c2 = ready()
    c2.changed([K1])
    assert c2.landed(c2.take(0), 0)
    assert not c2.landed(c2.take(0), None), "a missing mark is lost too"


def test_a_failed_read_makes_the_cache_suspect_until_a_heartbeat_lands() -> None:
    c = ready()
    c.distrust()
    assert not c.usable
    beat = c.take(0)
    assert beat.keys == []
    assert c.landed(beat, 0) and c.usable


def test_a_heartbeat_taken_before_a_failed_read_does_not_end_the_distrust() -> None:
    """Regression: a heartbeat whose script ran in Redis before a read failed, and whose outcome
    the invalidator noted only after it, ended the distrust on a check of Redis as it was
    before the failure (a Redis back from an old snapshot would then be used again)."""
    c = ready()
    before = c.take(0)
    c.distrust()
    assert c.landed(before, 0)
    assert not c.usable, "the heartbeat checked Redis before the failure"
    after = c.take(0)
    assert c.landed(after, 0) and c.usable


def test_abandon_gives_up_the_generation_from_any_thread() -> None:
    c = ready()
    gen = c.generation
    c.abandon()
    assert c.generation != gen and not c.usable


def test_a_key_being_committed_is_not_served_until_its_change_lands() -> None:
    c = ready()
    ticket = c.ticket(K1)
    c.changed([K1])
    earlier = c.take(0)  # an earlier change of the key, taken to Redis
    c.changing([K1])  # the next commit of the key begins
    assert c.ticket(K1) is None and ticket is not None and not c.still_valid(ticket, K1)
    assert c.landed(earlier, 0)
    assert c.ticket(K1) is None, "an earlier change's landing does not end a commit in progress"
    assert c.take(0).keys == [], "nothing to invalidate before the change is numbered"
    c.changed([K1])
    c.settled([K1])
    assert c.ticket(K1) is None, "changed, not landed"
    later = c.take(0)
    assert later.keys == [K1] and c.landed(later, earlier.seq)
    assert c.ticket(K1) is not None


def test_a_commit_that_changed_nothing_settles_its_keys() -> None:
    c = ready()
    c.changing([K1, K2])
    c.changed([K2])
    c.settled([K1, K2])
    assert c.ticket(K1) is not None, "K1 did not change"
    assert c.ticket(K2) is None, "K2 changed and has not landed"


def test_a_new_generation_keeps_the_keys_being_committed() -> None:
    c = ready()
    c.changing([K1])
    c.changed([K2])
    c.abandon()
    first = c.take(0)
    assert c.landed(first, None) and c.usable
    assert c.ticket(K2) is not None, "the new generation holds no entry of K2"
    assert c.ticket(K1) is None, "K1's commit may be visible in the engine already"
    c.changed([K1])
    c.settled([K1])
    assert c.landed(c.take(0), first.seq)
    assert c.ticket(K1) is not None


def test_a_commit_that_changed_nothing_keeps_an_earlier_change_that_has_not_landed() -> None:
    c = ready()
    c.changed([K1])  # numbered, its invalidation not landed
    c.changing([K1])  # a replicated duplicate of the key begins, and changes nothing
    c.settled([K1])
    assert c.ticket(K1) is None, "the earlier change has not landed"
    batch = c.take(0)
    assert batch.keys == [K1] and c.landed(batch, 0)
    assert c.ticket(K1) is not None


class _WriterBetweenReads:
    """Mixed into a mark's container: its membership test lets the writer thread run once,
    right after the reader looked (as a thread switch under the GIL would)."""

    writer: Callable[[], None] | None = None

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)  # type: ignore[misc]
        writer, self.writer = self.writer, None
        if writer is not None:
            writer()
        return bool(found)


class _DirtyBetweenReads(_WriterBetweenReads, dict[Key, int]):
    pass


class _CommitBetweenReads(_WriterBetweenReads, set[Key]):
    pass


def test_a_commit_told_between_the_readers_two_looks_is_not_missed() -> None:
    # The commit of K1 began (its store may show it already); the reader looks at the dirty
    # map, then the writer numbers the change and ends the commit, then the reader looks at the
    # commits in progress. Read in that order, K1 was in neither when looked at, and the cache
    # was used. `_marked` reads the commits in progress first, and finds it there.
    c = ready()
    c.changing([K1])

    def writer() -> None:
        c.changed([K1])
        c.settled([K1])

    c._dirty = dirty = _DirtyBetweenReads()
    dirty.writer = writer
    assert c.ticket(K1) is None, "the commit is in progress"
    assert c.ticket(K1) is None, "numbered, not landed"


def test_a_whole_commit_between_the_readers_two_looks_is_not_missed() -> None:
    # The order `_marked` uses: the reader finds no commit of K1 in progress, then a whole
    # commit of K1 runs (its store shows it once it is over), then the reader looks at the
    # dirty map, where the numbered change is until it lands.
    c = ready()

    def writer() -> None:
        c.changing([K1])
        c.changed([K1])
        c.settled([K1])

    c._committing = hooked = _CommitBetweenReads()
    hooked.writer = writer
    assert c.ticket(K1) is None
    assert hooked.writer is None, "the writer ran between the two looks"
