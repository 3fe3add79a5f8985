"""The engine operations of bounded growth, on every engine: change-log truncation (bounded per
call, positions never reused, kept across a reopen), the position-consistent snapshot a bootstrap
streams, tombstone purging and the pruning of versions a bootstrap's source purged."""

from __future__ import annotations

from collections.abc import Callable

from domicile.causality import CausalContext, Dot
from node.engine.base import LocalWrite, LogStart, StorageEngine

from .harness import EngineHarness, commit_ok

Stamp = Callable[[], int]


def test_truncation_removes_entries_up_to_the_point_in_bounded_steps(
    harness: EngineHarness, stamp: Stamp
) -> None:
    engine = harness.open()
    commit_ok(engine, stamp, *(LocalWrite("ns", f"k{i}", b"v") for i in range(10)))
    assert engine.log_start() == LogStart()
    first = engine.truncate_log(7, limit=4)
    assert first.lsn == 4 and first.hlc > 0  # bounded: four entries per call
    assert [m.lsn for m in engine.read_log(0, 100)] == list(range(5, 11))
    second = engine.truncate_log(7, limit=4)
    assert second.lsn == 7 and second.hlc > first.hlc
    assert engine.truncate_log(7, limit=4) == second  # nothing more to do
    assert [m.lsn for m in engine.read_log(0, 100)] == [8, 9, 10]
    # Positions go on from the counter, never from what the log still holds.
    engine = harness.reopen(engine)
    assert engine.log_start() == second
    [done] = commit_ok(engine, stamp, LocalWrite("ns", "k0", b"again"))
    assert done.mutation.lsn == 11
    # Truncating to the end leaves an empty log whose next position is still the counter's.
    assert engine.truncate_log(100, limit=100).lsn == 11
    assert engine.read_log(0, 100) == [] and engine.last_lsn() == 11
    [later] = commit_ok(engine, stamp, LocalWrite("ns", "k1", b"later"))
    assert later.mutation.lsn == 12


def test_the_snapshot_position_is_the_log_position_its_states_hold(
    engine: StorageEngine, stamp: Stamp
) -> None:
    commit_ok(engine, stamp, *(LocalWrite("ns", f"k{i}", b"v") for i in range(5)))
    with engine.snapshot_at() as (position, rows):
        first = next(rows)
        # Committed while the snapshot is read: neither in its states nor its position.
        commit_ok(engine, stamp, LocalWrite("ns", "k9", b"after"))
        seen = [first, *rows]
    assert position == 5
    assert [key for _, key, _ in seen] == [f"k{i}" for i in range(5)]
    assert engine.last_lsn() == 6


def test_tombstones_are_purged_only_when_still_dead_and_allowed(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, *(LocalWrite("ns", f"k{i}", b"v") for i in range(4)))
    commit_ok(engine, stamp, *(LocalWrite("ns", f"k{i}", tombstone=True) for i in range(3)))
    dead = engine.dead_states(("", ""), 100)
    assert [(ns, key) for ns, key, _ in dead] == [("ns", "k0"), ("ns", "k1"), ("ns", "k2")]
    assert engine.counts().tombstones == 3
    # k1 is written again before the purge: it is live, and stays.
    commit_ok(engine, stamp, LocalWrite("ns", "k1", b"back"))
    purged = engine.purge_tombstones(
        "ns",
        ["k0", "k1", "k2", "k3"],
        lambda _key, state: all(v.dot.counter == 2 for v in state.versions),
        1234,
    )
    assert purged == 2
    assert engine.get("ns", "k0") is None and engine.get("ns", "k2") is None
    assert engine.get("ns", "k1") is not None and engine.get("ns", "k3") is not None
    assert engine.counts().tombstones == 0 and engine.counts().records == 2
    assert engine.purged_before() == 1234
    # A refusing predicate purges nothing, and the cutoff never moves back.
    commit_ok(engine, stamp, LocalWrite("ns", "k3", tombstone=True))
    assert engine.purge_tombstones("ns", ["k3"], lambda key, state: False, 99) == 0
    assert engine.get("ns", "k3") is not None and engine.purged_before() == 1234
    assert engine.dead_states(("ns", "k2"), 10)[0][1] == "k3"


def test_pruning_drops_versions_and_their_dots_and_deletes_empty_keys(
    engine: StorageEngine, stamp: Stamp
) -> None:
    commit_ok(engine, stamp, LocalWrite("ns", "a", b"one"), LocalWrite("ns", "b", b"two"))
    # Two concurrent versions on "a" (a write with an empty context keeps the first).
    commit_ok(engine, stamp, LocalWrite("ns", "a", b"sibling", supersedes=CausalContext.empty()))
    state = engine.get("ns", "a")
    assert state is not None and len(state.versions) == 2
    first = state.versions[0].dot
    changed = engine.prune_versions("ns", {"a": {first}, "b": {Dot("node-a", 1)}, "missing": {first}})
    assert changed == 2
    pruned = engine.get("ns", "a")
    assert pruned is not None and [v.value for v in pruned.versions] == [b"sibling"]
    assert not pruned.context.covers(first)  # the same write arriving again is applied
    assert engine.get("ns", "b") is None
    assert engine.counts().records == 1


def test_regression_a_key_written_again_after_its_purge_never_reuses_a_dot(
    harness: EngineHarness, stamp: Stamp
) -> None:
    # a writes k (a:1); b deletes it (b:1 over {a:1}); a purges the tombstone, b keeps its own.
    # a's next write to k took a:1 again: b dropped it as a duplicate, and b's tombstone, pulled
    # back by anti-entropy, deleted the acknowledged write at a.
    a = harness.open("a", node_id="a")
    b = harness.open("b", node_id="b")
    [w] = commit_ok(a, stamp, LocalWrite("ns", "k", b"old"))
    b.apply_remote("a", [w.mutation], w.mutation.lsn)
    [d] = commit_ok(b, stamp, LocalWrite("ns", "k", tombstone=True))
    a.apply_remote("b", [d.mutation], d.mutation.lsn)
    read = a.get("ns", "k")
    assert read is not None
    assert a.purge_tombstones("ns", ["k"], lambda _key, _state: True, 1) == 1
    assert a.get("ns", "k") is None
    # The context of a read before the purge names counters this node issued: accepted.
    [n] = commit_ok(a, stamp, LocalWrite("ns", "k", b"new", supersedes=read.context))
    assert n.mutation.version.dot == Dot("a", 2)
    outcome = b.apply_remote("a", [n.mutation], n.mutation.lsn)
    held = b.get("ns", "k")
    assert outcome.duplicates == 0 and held is not None and [v.value for v in held.live()] == [b"new"]
    # A first write with no context starts above the floor too, in a compact context.
    [fresh] = commit_ok(a, stamp, LocalWrite("ns", "k2", b"x"))
    assert fresh.mutation.version.dot == Dot("a", 2)
    assert fresh.state.context == CausalContext.of({"a": 2})
    b.apply_remote("a", [fresh.mutation], fresh.mutation.lsn)
    replica = b.get("ns", "k2")
    assert replica is not None and replica.context == fresh.state.context  # digests agree
    # The floor survives a reopen.
    a = harness.reopen(a, "a")
    [later] = commit_ok(a, stamp, LocalWrite("ns", "k3", b"y"))
    assert later.mutation.version.dot == Dot("a", 2)


def test_regression_a_prune_of_this_nodes_newest_version_never_reuses_its_dot(
    engine: StorageEngine, stamp: Stamp
) -> None:
    [one] = commit_ok(engine, stamp, LocalWrite("ns", "k", b"one"))
    [two] = commit_ok(engine, stamp, LocalWrite("ns", "k", b"two", supersedes=CausalContext.empty()))
    assert two.mutation.version.dot.counter == 2
    # A bootstrap from a source that purged the second version drops it here.
    assert engine.prune_versions("ns", {"k": {two.mutation.version.dot}}) == 1
    [three] = commit_ok(engine, stamp, LocalWrite("ns", "k", b"three", supersedes=CausalContext.empty()))
    assert three.mutation.version.dot.counter > 2
    # Pruned to nothing, the key's counters are kept by the floor.
    state = engine.get("ns", "k")
    assert state is not None
    assert engine.prune_versions("ns", {"k": {v.dot for v in state.versions}}) == 1
    assert engine.get("ns", "k") is None
    [four] = commit_ok(engine, stamp, LocalWrite("ns", "k", b"four"))
    assert four.mutation.version.dot.counter > three.mutation.version.dot.counter
    assert one.mutation.version.dot.counter == 1


def test_regression_a_key_purged_here_and_written_again_by_another_node_never_reuses_a_dot(
    harness: EngineHarness, stamp: Stamp
) -> None:
    # a and c purge k's tombstone, b has not yet; c writes k again and a receives it: a's state
    # for k names no counter of a's. a's next write to k took a:1 again (the dot floor was read
    # only for a key the store did not hold): b dropped it as a duplicate, and b's tombstone
    # deleted it at a by anti-entropy.
    a = harness.open("a", node_id="a")
    b = harness.open("b", node_id="b")
    c = harness.open("c", node_id="c")
    [w] = commit_ok(a, stamp, LocalWrite("ns", "k", b"old"))
    for replica in (b, c):
        replica.apply_remote("a", [w.mutation], w.mutation.lsn)
    [d] = commit_ok(b, stamp, LocalWrite("ns", "k", tombstone=True))
    for replica in (a, c):
        replica.apply_remote("b", [d.mutation], d.mutation.lsn)
    for purging in (a, c):
        assert purging.purge_tombstones("ns", ["k"], lambda _key, _state: True, 1) == 1
    [again] = commit_ok(c, stamp, LocalWrite("ns", "k", b"from c"))
    a.apply_remote("c", [again.mutation], again.mutation.lsn)
    [n] = commit_ok(a, stamp, LocalWrite("ns", "k", b"new at a", supersedes=CausalContext.empty()))
    assert n.mutation.version.dot == Dot("a", 2)
    outcome = b.apply_remote("a", [n.mutation], n.mutation.lsn)
    assert outcome.duplicates == 0
    held = b.get("ns", "k")
    assert held is not None and b"new at a" in [v.value for v in held.live()]
    # The writer's context for the key is the one its replicas build from the mutation, so
    # their digests agree (no anti-entropy repair for every key written after a purge).
    c.apply_remote("a", [n.mutation], n.mutation.lsn)
    at_a, at_c = a.get("ns", "k"), c.get("ns", "k")
    assert at_a is not None and at_c is not None and at_a.context == at_c.context
