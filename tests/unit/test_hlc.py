"""The hybrid logical clock, driven by an injected wall clock."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.hlc import LOGICAL_BITS, LOGICAL_MASK, HybridClock, pack, physical_ms, wall_ms


class FakeWall:
    """A wall clock in milliseconds that the test sets."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def logical(hlc: int) -> int:
    return hlc & LOGICAL_MASK


def test_pack_and_unpack() -> None:
    assert physical_ms(pack(1234, 7)) == 1234
    assert logical(pack(1234, 7)) == 7
    assert pack(1, 0) == 1 << LOGICAL_BITS


def test_a_moving_wall_clock_gives_its_time_with_a_zero_counter() -> None:
    wall = FakeWall(1000)
    clock = HybridClock(wall)
    assert clock.now() == pack(1000, 0)
    wall.ms = 1005
    assert clock.now() == pack(1005, 0)


def test_a_stalled_wall_clock_counts_up_logically() -> None:
    clock = HybridClock(FakeWall(1000))
    stamps = [clock.now() for _ in range(5)]
    assert stamps == [pack(1000, i) for i in range(5)]


def test_a_wall_clock_going_backwards_never_moves_the_clock_back() -> None:
    wall = FakeWall(5000)
    clock = HybridClock(wall)
    before = clock.now()
    wall.ms = 4000  # NTP stepped the clock back a second
    after = [clock.now() for _ in range(3)]
    assert after == [before + 1, before + 2, before + 3]
    assert all(physical_ms(t) == 5000 for t in after)
    wall.ms = 5001
    assert clock.now() == pack(5001, 0)


def test_logical_overflow_borrows_a_millisecond_instead_of_wrapping() -> None:
    clock = HybridClock(FakeWall(1000))
    clock.observe(pack(1000, LOGICAL_MASK))
    nxt = clock.now()
    assert nxt == pack(1001, 0)
    assert nxt > pack(1000, LOGICAL_MASK)
    assert clock.now() == pack(1001, 1)


def test_observe_moves_the_clock_past_a_remote_timestamp_ahead_of_it() -> None:
    clock = HybridClock(FakeWall(1000))
    clock.now()
    remote = pack(9000, 42)
    observed = clock.observe(remote)
    assert observed >= remote
    later = clock.now()
    assert later > remote
    assert physical_ms(later) == 9000 and logical(later) == 43


def test_observe_of_an_older_remote_timestamp_still_advances() -> None:
    wall = FakeWall(5000)
    clock = HybridClock(wall)
    local = clock.now()
    observed = clock.observe(pack(10, 3))
    assert observed > local
    assert clock.now() > observed


def test_observe_returns_wall_time_when_it_is_ahead_of_both() -> None:
    wall = FakeWall(100)
    clock = HybridClock(wall)
    clock.now()
    wall.ms = 200
    assert clock.observe(pack(150, 9)) == pack(200, 0)


@settings(max_examples=200, deadline=None, print_blob=True)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("now"), st.integers(-50, 50)),
            st.tuples(st.just("observe"), st.integers(0, 2_000)),
        ),
        max_size=60,
    )
)
def test_every_timestamp_is_greater_than_everything_issued_or_observed(ops: list[tuple[str, int]]) -> None:
    wall = FakeWall(1_000)
    clock = HybridClock(wall)
    highest = 0
    for op, arg in ops:
        if op == "now":
            wall.ms = max(0, wall.ms + arg)  # the wall clock jumps both ways
            stamp = clock.now()
            assert stamp > highest
            assert physical_ms(stamp) >= wall.ms  # never behind the wall clock
            highest = stamp
        else:
            remote = pack(arg, arg % 7)
            stamp = clock.observe(remote)
            assert stamp >= remote and stamp >= highest
            assert physical_ms(stamp) >= wall.ms
            highest = max(highest, stamp, remote)
    assert clock.now() > highest


def test_the_clock_stays_close_to_wall_time() -> None:
    clock = HybridClock()
    before = wall_ms()
    stamp = clock.now()
    assert before <= physical_ms(stamp) <= wall_ms()


def test_concurrent_callers_never_get_the_same_timestamp() -> None:
    clock = HybridClock(FakeWall(1_000))
    per_thread: list[list[int]] = [[] for _ in range(4)]

    def take(out: list[int]) -> None:
        for _ in range(2_000):
            out.append(clock.now())

    threads = [threading.Thread(target=take, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps = [s for out in per_thread for s in out]
    assert len(set(stamps)) == len(stamps) == 8_000
    assert all(out == sorted(out) for out in per_thread)


class Ceiling:
    """A durable store of the clock's ceiling, as the node's ceiling file is."""

    def __init__(self) -> None:
        self.stored: list[int] = []

    def __call__(self, ms: int) -> None:
        self.stored.append(ms)


def test_a_restarted_clock_resumes_above_its_stored_ceiling_with_the_wall_clock_set_back() -> None:
    wall = FakeWall(10_000)
    ceiling = Ceiling()
    first = HybridClock(wall)
    first.persist(0, ceiling, step_ms=1000)
    issued = [first.now() for _ in range(5)]
    wall.ms = 10_500
    issued.append(first.now())
    # The wall clock goes back an hour while the node is down.
    wall.ms = 10_000 - 3_600_000
    restarted = HybridClock(wall)
    restarted.persist(ceiling.stored[-1], Ceiling(), step_ms=1000)
    assert restarted.now() > max(issued)


def test_negative_control_a_clock_without_persistence_goes_back_with_the_wall_clock() -> None:
    wall = FakeWall(10_000)
    before = HybridClock(wall).now()
    wall.ms = 10_000 - 3_600_000
    assert HybridClock(wall).now() < before


def test_the_ceiling_is_stored_once_per_step_not_once_per_tick() -> None:
    wall = FakeWall(10_000)
    ceiling = Ceiling()
    clock = HybridClock(wall)
    clock.persist(0, ceiling, step_ms=1000)
    for ms in range(10_000, 12_500, 10):
        wall.ms = ms
        clock.now()
    # 250 ticks over 2.5 s store three times: at the first tick, then at the first tick past
    # each stored ceiling (wall time moves in 10 ms ticks).
    assert ceiling.stored == [11_000, 12_010, 13_020]
    # Every timestamp issued is within the last stored ceiling.
    assert physical_ms(clock.now()) <= ceiling.stored[-1]


def test_an_observed_remote_time_past_the_ceiling_is_reserved_before_it_is_merged() -> None:
    wall = FakeWall(10_000)
    ceiling = Ceiling()
    clock = HybridClock(wall)
    clock.persist(0, ceiling, step_ms=1000)
    merged = clock.observe(pack(14_000, 3))
    assert merged >= pack(14_000, 3)
    assert clock.now() > merged
    assert ceiling.stored[-1] >= physical_ms(merged)


def test_a_clock_that_cannot_store_its_ceiling_issues_nothing_past_it() -> None:
    wall = FakeWall(10_000)

    def broken(ms: int) -> None:
        raise OSError("disk full")

    clock = HybridClock(wall)
    clock.persist(9_000, broken, step_ms=1000)
    try:
        clock.now()
    except OSError:
        pass
    else:
        raise AssertionError("a timestamp past the stored ceiling was issued without storing it")


def test_a_distrusted_wall_clock_leaves_no_timestamp_behind() -> None:
    wall = [1_000_000]
    clock = HybridClock(lambda: wall[0])
    before = clock.now()
    clock.wall_distrusted = lambda: True
    wall[0] += 3_600_000  # an hour ahead, known to be wrong
    stamped = clock.now()
    assert physical_ms(stamped) == wall[0]  # what an audit entry says meanwhile
    # A peer's timestamp still orders later events after it, without the wrong wall time.
    observed = clock.observe(pack(1_000_500, 0))
    assert physical_ms(observed) == 1_000_500
    clock.wall_distrusted = lambda: False
    wall[0] -= 3_600_000 - 1_000  # the clock is fixed
    after = clock.now()
    assert before < observed < after and physical_ms(after) == 1_001_000


def test_an_early_reservation_stores_the_next_step_before_a_timestamp_needs_it() -> None:
    wall = FakeWall(10_000)
    ceiling = Ceiling()
    started: list[Callable[[], None]] = []
    clock = HybridClock(wall)
    clock.persist(0, ceiling, step_ms=1000, early=started.append)
    clock.now()  # past the restored ceiling: stored at once, as without early reservations
    assert ceiling.stored == [11_000] and started == []
    wall.ms = 10_400
    clock.now()
    assert started == []  # more than half a step below the ceiling: nothing early yet
    wall.ms = 10_600
    clock.now()
    assert len(started) == 1 and ceiling.stored == [11_000]
    wall.ms = 10_700
    clock.now()
    assert len(started) == 1  # one early reservation at a time
    started.pop()()  # the background store runs, off the clock's lock
    assert ceiling.stored == [11_000, 12_000]
    wall.ms = 11_500
    stored_before = list(ceiling.stored)
    stamp = clock.now()  # past the old ceiling: the early store covers it, no wait
    assert ceiling.stored == stored_before
    assert physical_ms(stamp) <= ceiling.stored[-1]


def test_a_timestamp_past_the_ceiling_still_waits_for_its_store_when_the_early_one_has_not_run() -> None:
    wall = FakeWall(10_000)
    ceiling = Ceiling()
    started: list[Callable[[], None]] = []
    clock = HybridClock(wall)
    clock.persist(0, ceiling, step_ms=1000, early=started.append)
    clock.now()
    wall.ms = 10_600
    clock.now()
    assert len(started) == 1 and ceiling.stored == [11_000]
    wall.ms = 11_200  # the early store has not run yet
    stamp = clock.now()
    assert ceiling.stored == [11_000, 12_200] and physical_ms(stamp) <= 12_200
    started.pop()()  # late: it stores the step after what is stored now, never below it
    assert ceiling.stored == [11_000, 12_200, 13_200]
    # Every stored value only grows, and no timestamp passes the last one.
    for ms in range(11_200, 15_000, 50):
        wall.ms = ms
        stamp = clock.now()
        while started:
            started.pop()()
        assert physical_ms(stamp) <= ceiling.stored[-1]
    assert ceiling.stored == sorted(set(ceiling.stored))


def test_an_early_reservation_that_fails_leaves_the_store_to_the_timestamp_that_needs_it() -> None:
    wall = FakeWall(10_000)
    stored: list[int] = []
    failing = [False]

    def reserve(ms: int) -> None:
        if failing[0]:
            raise OSError("disk full")
        stored.append(ms)

    started: list[Callable[[], None]] = []
    clock = HybridClock(wall)
    clock.persist(0, reserve, step_ms=1000, early=started.append)
    clock.now()
    failing[0] = True
    wall.ms = 10_600
    clock.now()
    started.pop()()  # fails quietly
    assert stored == [11_000]
    wall.ms = 11_100
    try:
        clock.now()
    except OSError:
        pass
    else:
        raise AssertionError("a timestamp past the stored ceiling was issued without storing it")
    failing[0] = False
    assert physical_ms(clock.now()) <= stored[-1]


@settings(max_examples=100, deadline=None, print_blob=True)
@given(
    st.integers(1, 3 * (1 << LOGICAL_BITS)),
    st.integers(0, LOGICAL_MASK),
    st.integers(-5, 5),
)
def test_a_block_is_the_timestamps_of_as_many_calls_in_a_row(n: int, counter: int, wall_step: int) -> None:
    # Two clocks in the same state (a last timestamp with some logical counter, the wall clock
    # then moved by wall_step ms, possibly back): a block of n is the n calls of now() in a row.
    walls = FakeWall(1_000_000), FakeWall(1_000_000)
    called, blocked = HybridClock(walls[0]), HybridClock(walls[1])
    for clock in (called, blocked):
        clock.observe(pack(1_000_000, counter))
    for wall in walls:
        wall.ms += wall_step
    block = blocked.block(n)
    assert list(block) == [called.now() for _ in range(n)]
    assert blocked.now() == called.now() > block[-1]


def test_a_block_past_the_ceiling_is_stored_first_and_a_distrusted_clock_gives_none() -> None:
    wall = FakeWall(10_000)
    ceiling = Ceiling()
    clock = HybridClock(wall)
    clock.persist(0, ceiling, step_ms=1000)
    block = clock.block(1000)
    assert len(block) == 1000 and physical_ms(block[-1]) <= ceiling.stored[-1]
    clock.wall_distrusted = lambda: True
    assert len(clock.block(10)) == 0  # the caller then asks now() for each (not recorded)
    clock.wall_distrusted = lambda: False
    assert clock.now() > block[-1]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            clock.block(bad)
