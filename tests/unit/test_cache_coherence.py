"""The cache's in-memory coherence rules (node/cache/coherence.py), without Redis."""

from __future__ import annotations

from node.cache.coherence import Coherence

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


def test_abandon_gives_up_the_generation_from_any_thread() -> None:
    c = ready()
    gen = c.generation
    c.abandon()
    assert c.generation != gen and not c.usable
