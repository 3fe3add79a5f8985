"""The rules of bounded growth, without a store: how far the change log may be truncated, and
which tombstoned key states may be purged."""

from __future__ import annotations

from domicile.causality import CausalContext, Dot, KeyState, Version
from domicile.hlc import pack
from domicile.subjects import HoldScope, LegalHold
from node.engine.base import LogStart
from node.metrics import NodeMetrics
from node.replication.tombstone_gc import purgeable
from node.replication.truncation import (
    Away,
    HoldLimit,
    collection_start,
    stalls_from_bytes,
    stalls_to_bytes,
    truncation_point,
)

ME = "eu-west-1"


def test_truncation_stops_at_the_least_acknowledged_link_and_the_backup() -> None:
    assert truncation_point(100, {"a": 40, "b": 70}, None) == 40
    assert truncation_point(100, {"a": 90}, 60) == 60
    # No links: everything this node wrote is held by every replica there is.
    assert truncation_point(100, {}, None) == 100
    # A link without a sender yet: nothing goes, whatever the others acknowledged.
    assert truncation_point(100, None, 100) == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def released_gauge(metrics: NodeMetrics, target: str) -> float:
    return float(metrics.changelog_link_released.labels(ME, target)._value.get())


def test_a_link_silent_past_the_hold_limit_stops_holding_truncation_until_it_acknowledges() -> None:
    clock, metrics = Clock(), NodeMetrics(ME, ME)
    limit = HoldLimit(60.0, metrics, ME, clock)
    assert limit.holding({"down": 40, "up": 90}, 100) == {"down": 40, "up": 90}
    clock.now += 59
    # "up" acknowledges as it goes, "down" has not moved: it holds for the whole limit...
    assert limit.holding({"down": 40, "up": 100}, 120) == {"down": 40, "up": 100}
    clock.now += 1
    # ...and not a moment longer; a link that keeps acknowledging is never released.
    assert limit.holding({"down": 40, "up": 110}, 130) == {"up": 110}
    assert limit.released == {"down"}
    assert released_gauge(metrics, "down") == 1 and released_gauge(metrics, "up") == 0
    assert metrics.changelog_hold_releases.labels(ME, "down")._value.get() == 1
    clock.now += 3600
    assert limit.holding({"down": 40, "up": 130}, 130) == {"up": 130}
    assert metrics.changelog_hold_releases.labels(ME, "down")._value.get() == 1
    # Back (bootstrapped): it acknowledges, and holds truncation again from there.
    assert limit.holding({"down": 130, "up": 130}, 140) == {"down": 130, "up": 130}
    assert limit.released == frozenset() and released_gauge(metrics, "down") == 0


def test_a_caught_up_link_holds_nothing_and_is_never_released() -> None:
    clock = Clock()
    limit = HoldLimit(10.0, NodeMetrics(ME, ME), ME, clock)
    for _ in range(5):
        assert limit.holding({"idle": 100}, 100) == {"idle": 100}
        clock.now += 100
    # The stall counts from the first pass that sees it behind, not from its last ack.
    assert limit.holding({"idle": 100}, 101) == {"idle": 100}


def test_a_hold_limit_of_zero_lets_a_down_link_hold_truncation_for_ever() -> None:
    clock = Clock()
    limit = HoldLimit(0.0, NodeMetrics(ME, ME), ME, clock)
    limit.holding({"down": 40}, 100)
    clock.now += 10 * 365 * 86_400
    assert limit.holding({"down": 40}, 100) == {"down": 40}


def test_a_link_removed_from_the_topology_is_forgotten() -> None:
    clock, metrics = Clock(), NodeMetrics(ME, ME)
    limit = HoldLimit(1.0, metrics, ME, clock)
    limit.holding({"gone": 5}, 100)
    clock.now += 2
    assert limit.holding({"gone": 5}, 100) == {}
    assert limit.holding({}, 100) == {}
    assert limit.released == frozenset() and released_gauge(metrics, "gone") == 0


def test_a_released_link_holds_while_its_bootstrap_runs_but_its_time_goes_on() -> None:
    """Regression: a released link's bootstrap was overtaken by the truncation it was made for,
    and had to start over (the target answered, but did not count as connected until it had
    been bootstrapped). It holds while its session is open; bootstraps that keep failing hold
    truncation only while each runs, since its time is not started over."""
    clock, metrics = Clock(), NodeMetrics(ME, ME)
    limit = HoldLimit(60.0, metrics, ME, clock)
    limit.holding({"back": 40}, 100)
    clock.now += 61
    assert limit.holding({"back": 40}, 100) == {}
    assert limit.holding({"back": 40}, 200, opening={"back"}) == {"back": 40}
    clock.now += 3600
    assert limit.holding({"back": 40}, 300, opening={"back"}) == {"back": 40}
    # The bootstrap failed (no session): released again at once, its time not started over.
    assert limit.holding({"back": 40}, 300) == {}
    # It succeeded (streaming, acknowledging): it holds from its new position.
    assert limit.holding({"back": 290}, 300, connected={"back"}) == {"back": 290}
    assert limit.released == frozenset()


def test_a_connected_link_behind_past_the_hold_limit_keeps_holding_truncation() -> None:
    """A scheduled link waits days between windows with its session open: its position stays
    still while the log grows, yet its target is there. Released, it would be truncated past
    and sent a whole snapshot instead of what accumulated, at each window."""
    clock, metrics = Clock(), NodeMetrics(ME, ME)
    limit = HoldLimit(60.0, metrics, ME, clock)
    assert limit.holding({"weekly": 40}, 100, connected={"weekly"}) == {"weekly": 40}
    clock.now += 7 * 86_400
    assert limit.holding({"weekly": 40}, 200, connected={"weekly"}) == {"weekly": 40}
    assert limit.released == frozenset() and released_gauge(metrics, "weekly") == 0
    # Its session lost: the limit counts from the last pass that saw it connected.
    clock.now += 59
    assert limit.holding({"weekly": 40}, 200) == {"weekly": 40}
    # Negative control: the same silence with no session for the whole limit releases it.
    clock.now += 1
    assert limit.holding({"weekly": 40}, 200) == {}
    assert limit.released == {"weekly"} and released_gauge(metrics, "weekly") == 1
    # Connected again (bootstrapping): it holds truncation again at once.
    assert limit.holding({"weekly": 40}, 200, connected={"weekly"}) == {"weekly": 40}
    assert limit.released == frozenset() and released_gauge(metrics, "weekly") == 0


def test_own_tombstones_are_not_collected_while_a_link_is_behind_the_log_start() -> None:
    """A released target (or one not bootstrapped yet) may still hold what this node's old
    tombstones deleted: purged here, an anti-entropy round with it would bring the record back."""
    start = LogStart(100, pack(5_000, 0))
    assert collection_start(start, {"a": 100, "b": 150}) == start
    assert collection_start(start, {}) == start
    assert collection_start(start, {"a": 99, "b": 150}) == LogStart()
    assert collection_start(start, None) == LogStart()
    old = state(tombstone(ME, 1, 4_000))

    def purged_with(link_acks: dict[str, int] | None) -> bool:
        return purgeable(
            old, namespace="ns", key="k", writer_id=ME, log_start=collection_start(start, link_acks),
            cutoff_hlc=pack(10_000, 0), holds=(),
        )  # fmt: skip

    # Negative control: every link at or past the start, the old tombstone goes.
    assert purged_with({"a": 100})
    assert not purged_with({"a": 40})
    assert not purged_with(None)
    # Another writer's tombstone is purged on its horizon alone, as before.
    assert purgeable(
        state(tombstone("other", 1, 4_000)), namespace="ns", key="k", writer_id=ME,
        log_start=collection_start(start, {"a": 40}), cutoff_hlc=pack(10_000, 0), holds=(),
    )  # fmt: skip


def tombstone(node: str, counter: int, ms: int, subject: str = "") -> Version:
    return Version(dot=Dot(node, counter), value=b"", hlc=pack(ms, 0), tombstone=True, subject_id=subject)


def state(*versions: Version) -> KeyState:
    return KeyState(versions, CausalContext.of(dots=[v.dot for v in versions]))


def may_purge(
    s: KeyState, *, start_ms: int = 5_000, cutoff_ms: int = 10_000, holds: tuple[LegalHold, ...] = ()
) -> bool:
    return purgeable(
        s, namespace="ns", key="k", writer_id=ME, log_start=LogStart(7, pack(start_ms, 0)),
        cutoff_hlc=pack(cutoff_ms, 0), holds=holds,
    )  # fmt: skip


def test_an_old_acknowledged_tombstone_is_purged() -> None:
    assert may_purge(state(tombstone(ME, 1, 4_000)))


def test_a_tombstone_after_the_truncation_point_is_kept_until_every_replica_acknowledged() -> None:
    assert not may_purge(state(tombstone(ME, 1, 6_000)))
    assert may_purge(state(tombstone(ME, 1, 6_000)), start_ms=6_000)


def test_a_tombstone_younger_than_the_horizon_is_kept() -> None:
    assert not may_purge(state(tombstone("other", 1, 12_000)))
    # Another writer's tombstone goes on its horizon alone.
    assert may_purge(state(tombstone("other", 1, 9_000)))


def test_live_versions_and_holds_keep_a_state() -> None:
    live = Version(dot=Dot(ME, 2), value=b"v", hlc=pack(1_000, 0))
    assert not may_purge(state(tombstone(ME, 1, 1_000), live))
    hold = LegalHold("h1", HoldScope.SUBJECT, subject_id="s-1")
    assert not may_purge(state(tombstone(ME, 1, 1_000, subject="s-1")), holds=(hold,))
    assert may_purge(state(tombstone(ME, 1, 1_000, subject="s-2")), holds=(hold,))


def test_regression_a_restart_resumes_the_time_a_down_target_has_been_away() -> None:
    """The time counted by the process's monotonic clock only: a node restarted while a target
    was down started it over, so a node that restarts more often than the hold limit (or
    crash-loops) never let that target go, and its change log grew without bound."""
    clock, wall = Clock(), Clock()
    wall.now = 1_800_000_000.0
    before = HoldLimit(60.0, NodeMetrics(ME, ME), ME, clock, wall)
    before.holding({"down": 40, "up": 90}, 100, connected={"up"})
    assert before.away() == Away({"down": (40, wall.now)}, wall.now)
    clock.now += 59
    wall.now += 59
    assert before.holding({"down": 40, "up": 100}, 120, connected={"up"}) == {"down": 40, "up": 100}
    saved = stalls_from_bytes(stalls_to_bytes(before.away()))
    # A new process: its monotonic clock starts elsewhere; the wall clock goes on.
    restarted_clock = Clock()
    restarted_clock.now = 5.0
    wall.now += 1
    after = HoldLimit(60.0, NodeMetrics(ME, ME), ME, restarted_clock, wall)
    after.resume(saved)
    # The second it was down does not count; the one it runs after the restart does.
    restarted_clock.now += 1
    wall.now += 1
    assert after.holding({"down": 40, "up": 120}, 130, connected={"up"}) == {"up": 120}
    assert after.released == {"down"}
    # Negative control: the same pass without what was saved counts from now.
    fresh = HoldLimit(60.0, NodeMetrics(ME, ME), ME, restarted_clock, wall)
    assert fresh.holding({"down": 40, "up": 120}, 130, connected={"up"}) == {"down": 40, "up": 120}


def test_a_resumed_stall_counts_only_while_its_target_stays_where_it_was() -> None:
    clock, wall = Clock(), Clock()
    saved = {
        "moved": (40, wall.now - 3600),
        "ahead": (40, wall.now + 3600),
        "connected": (40, wall.now - 3600),
    }
    limit = HoldLimit(60.0, NodeMetrics(ME, ME), ME, clock, wall)
    limit.resume(Away(saved, wall.now))
    # "moved" acknowledged something since; "ahead" was saved by a clock now behind (it counts
    # from now, never from the future); "connected" has its session back.
    kept = limit.holding({"moved": 50, "ahead": 40, "connected": 40}, 100, connected={"connected"})
    assert kept == {"moved": 50, "ahead": 40, "connected": 40}
    assert limit.away() == Away({"moved": (50, wall.now), "ahead": (40, wall.now)}, wall.now)
    clock.now += 60
    assert limit.holding({"moved": 50, "ahead": 40, "connected": 40}, 100, connected={"connected"}) == {
        "connected": 40
    }


def test_stored_stalls_that_cannot_be_read_count_from_now() -> None:
    assert stalls_from_bytes(None) == Away()
    assert stalls_from_bytes(b"not json") == Away()
    assert stalls_from_bytes(b'{"t": "x"}') == Away()
    assert stalls_from_bytes(b'{"running": 2.0, "stalls": {"t": "x"}}') == Away()
    assert stalls_from_bytes(stalls_to_bytes(Away({"t": (3, 1.5)}, 2.0))) == Away({"t": (3, 1.5)}, 2.0)


def test_regression_a_resumed_stall_does_not_count_the_time_this_node_was_down() -> None:
    """A restart resumed a stall by the wall clock from its start, this node's own downtime
    included: a target seen away 10 s before this node stopped for 2 h (hold limit 1 h) was
    released at the first pass after the restart, before any session could reconnect, and the
    log truncated past a live replica, which then needed a bootstrap."""
    clock, wall = Clock(), Clock()
    wall.now = 1_800_000_000.0
    before = HoldLimit(3600.0, NodeMetrics(ME, ME), ME, clock, wall)
    before.holding({"peer": 40}, 100, connected={"peer"})
    clock.now += 10
    wall.now += 10
    before.holding({"peer": 40}, 100, connected=())
    saved = before.away()
    wall.now += 7200
    after = HoldLimit(3600.0, NodeMetrics(ME, ME), ME, Clock(), wall)
    after.resume(saved)
    assert after.holding({"peer": 40}, 100, connected=()) == {"peer": 40}
