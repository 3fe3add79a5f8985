"""The writer-side clock bound's arithmetic: samples, extrapolation on the monotonic clock, the
last issued timestamp, and recovery."""

from __future__ import annotations

from domicile import errors
from node.clock_guard import ClockGuard

DRIFT_MS = 5000


class Clocks:
    def __init__(self) -> None:
        self.wall_ms = 1_000_000_000
        self.monotonic_s = 100.0
        self.last_issued_ms = 0


def guard(clocks: Clocks, changes: list[tuple[int, bool]] | None = None) -> ClockGuard:
    return ClockGuard(
        DRIFT_MS,
        lambda: clocks.last_issued_ms,
        wall=lambda: clocks.wall_ms,
        monotonic=lambda: clocks.monotonic_s,
        on_change=lambda ahead, refusing: (changes if changes is not None else []).append((ahead, refusing)),
    )


def test_before_any_sample_nothing_is_refused() -> None:
    clocks = Clocks()
    clocks.wall_ms += 10**9
    g = guard(clocks)
    assert g.ahead_ms() is None and g.refusal() is None


def test_a_clock_ahead_beyond_the_drift_is_refused_and_recovers_at_the_next_sample() -> None:
    clocks = Clocks()
    changes: list[tuple[int, bool]] = []
    g = guard(clocks, changes)
    # The coordinator reads 60 s behind this node, at the midpoint of a 20 ms round trip.
    g.sample(100.0, clocks.wall_ms - 60_000, 100.02)
    assert changes[-1][1] is True and 59_000 < changes[-1][0] < 61_000
    refused = g.refusal()
    assert isinstance(refused, errors.Unavailable)
    assert "ahead of the coordinator's" in refused.message and "max_clock_drift_ms" in refused.message
    clocks.wall_ms -= 60_000  # NTP fixed it
    assert g.refusal() is None
    g.sample(101.0, clocks.wall_ms, 101.0)
    assert changes[-1][1] is False


def test_a_wall_clock_that_jumps_between_samples_is_caught_without_a_new_sample() -> None:
    clocks = Clocks()
    g = guard(clocks)
    g.sample(100.0, clocks.wall_ms, 100.0)
    clocks.monotonic_s += 30
    clocks.wall_ms += 30_000
    assert g.refusal() is None  # time passed on both clocks alike
    clocks.wall_ms += 3_600_000
    assert g.refusal() is not None


def test_a_last_timestamp_far_ahead_keeps_refusing_until_real_time_catches_up() -> None:
    clocks = Clocks()
    g = guard(clocks)
    clocks.last_issued_ms = clocks.wall_ms + 600_000  # issued while the clock ran ahead
    g.sample(100.0, clocks.wall_ms, 100.0)
    assert g.refusal() is not None
    clocks.monotonic_s += 600
    clocks.wall_ms += 600_000
    assert g.refusal() is None


def test_within_the_drift_nothing_is_refused() -> None:
    clocks = Clocks()
    g = guard(clocks)
    g.sample(100.0, clocks.wall_ms - DRIFT_MS, 100.0)
    assert g.refusal() is None


def test_a_slow_round_trip_gives_the_node_the_benefit_of_the_doubt() -> None:
    clocks = Clocks()
    g = guard(clocks)
    # Sent at monotonic 100, answered at 104: taken as read at 102, when this wall clock said
    # wall + 2 s, and the answer was 6.5 s behind that. It may have been read up to 2 s off.
    g.sample(100.0, clocks.wall_ms + 2_000 - 6_500, 104.0)
    clocks.monotonic_s = 104.0
    clocks.wall_ms += 4_000
    assert g.ahead_ms() == 6_500
    assert g.refusal() is None
    # A prompt answer that says the same is certain: refused.
    g.sample(104.0, clocks.wall_ms - 6_500, 104.0)
    assert g.refusal() is not None


def test_distrusted_says_what_refusal_says_at_every_offset_around_the_bound() -> None:
    # The clock asks distrusted() at every timestamp (without building an error): it must agree
    # with refusal() on either side of the bound, uncertainty included, and before any sample.
    clocks = Clocks()
    g = guard(clocks)
    assert g.distrusted() is False and g.refusal() is None
    g.sample(100.0, clocks.wall_ms, 100.01)  # 5 ms of uncertainty
    start = clocks.wall_ms
    seen = set()
    for offset_ms in range(DRIFT_MS - 20, DRIFT_MS + 20):
        clocks.wall_ms = start + offset_ms
        seen.add(g.distrusted())
        assert g.distrusted() is (g.refusal() is not None), offset_ms
    assert seen == {True, False}
    clocks.wall_ms = start
    clocks.last_issued_ms = start + DRIFT_MS + 1000  # an HLC issued far ahead keeps it refusing
    assert g.distrusted() is True and g.refusal() is not None
