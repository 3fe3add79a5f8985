"""Sync modes: the cluster config's `sync`, cron windows, a link's cadence, and when its sender
may ship (node/replication/cadence.py, with a clock the test moves)."""

from __future__ import annotations

import asyncio
import calendar

import pytest

from domicile.errors import InvalidArgument
from domicile.sync_modes import Cron, LinkCadence, SyncSpec, link_cadence, parse_sync
from node.replication.cadence import Cadence

REGIONS = ["eu-west-1", "us-west-2"]
# Wednesday 2026-12-02 01:59:00 UTC.
T0 = float(calendar.timegm((2026, 12, 2, 1, 59, 0)))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("hourly", "must be 'realtime' or a mapping"),
        ({"mode": "bulk"}, "sync.mode must be one of realtime, batch, scheduled"),
        ({"mode": "batch"}, "sync.interval_s must be a number of seconds above 0"),
        ({"mode": "batch", "interval_s": 0}, "sync.interval_s must be a number of seconds above 0"),
        ({"mode": "batch", "interval_s": 10, "to": ["ap-south-1"]}, "sync.to names ['ap-south-1']"),
        ({"mode": "batch", "interval_s": 10, "every": 3}, "unknown fields ['every']"),
        ({"mode": "scheduled", "window_s": 600}, "sync.window must be a cron expression"),
        ({"mode": "scheduled", "window": "0 2 * *", "window_s": 600}, "has 4 fields; it needs five"),
        ({"mode": "scheduled", "window": "0 25 * * *", "window_s": 600}, "outside the hour field's 0-23"),
        ({"mode": "scheduled", "window": "x 2 * * *", "window_s": 600}, "'x' is not a number"),
        ({"mode": "scheduled", "window": "0 2 * * *", "window_s": 30}, "at least 60 seconds"),
    ],
)
def test_a_bad_sync_setting_is_refused_naming_the_field(raw: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_sync(raw, "namespaces[0] (reports)", REGIONS)
    assert message in info.value.message and "namespaces[0] (reports)" in info.value.message


def test_cron_matches_minutes_hours_steps_and_days() -> None:
    at_two = Cron.parse("0 2 * * *")
    assert at_two.matches(T0 + 60) and not at_two.matches(T0) and not at_two.matches(T0 + 120)
    assert at_two.next_opening(T0) == T0 + 60
    weekdays = Cron.parse("*/15 9-17 * * 1-5")
    monday_nine = float(calendar.timegm((2026, 11, 30, 9, 45, 0)))
    assert weekdays.matches(monday_nine) and not weekdays.matches(monday_nine + 60)
    sunday_nine = float(calendar.timegm((2026, 11, 29, 9, 45, 0)))
    assert not weekdays.matches(sunday_nine)
    # Both day fields restricted: either matches (the first of the month, or any Sunday).
    either = Cron.parse("0 0 1 * 0")
    assert either.matches(float(calendar.timegm((2026, 12, 1, 0, 0, 0))))  # a Tuesday, the 1st
    assert either.matches(float(calendar.timegm((2026, 12, 6, 0, 0, 0))))  # a Sunday
    assert not either.matches(float(calendar.timegm((2026, 12, 2, 0, 0, 0))))


def test_a_link_is_as_eager_as_its_most_eager_namespace_toward_its_target() -> None:
    batch = parse_sync({"mode": "batch", "interval_s": 300, "to": ["us-west-2"]}, "n", REGIONS)
    fast = parse_sync({"mode": "batch", "interval_s": 60}, "n", REGIONS)
    nightly = parse_sync({"mode": "scheduled", "window": "0 2 * * *", "window_s": 3600}, "n", REGIONS)
    assert link_cadence([batch], "us-west-2") == LinkCadence("batch", interval_s=300)
    assert link_cadence([batch], "eu-west-1").mode == "realtime"  # `to` names another region
    assert link_cadence([batch, SyncSpec()], "us-west-2").mode == "realtime"
    assert link_cadence([batch, fast], "us-west-2").interval_s == 60
    assert link_cadence([batch, nightly], "us-west-2").mode == "batch"
    scheduled = link_cadence([nightly], "us-west-2")
    assert not scheduled.window_open(T0) and scheduled.window_open(T0 + 60)
    assert scheduled.window_open(T0 + 60 + 3599) and not scheduled.window_open(T0 + 60 + 3600)
    # The longest wait: from one opening to the next (a day), plus the window.
    assert scheduled.allowance_s(T0) == 86_400 + 3600
    assert link_cadence([batch], "us-west-2").allowance_s(T0) == 300
    assert link_cadence([], "us-west-2").allowance_s(T0) == 0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_batch_link_drains_in_one_turn_then_waits_for_the_interval() -> None:
    clock = Clock(T0)
    drained: list[float] = []
    cadence = Cadence(LinkCadence("batch", interval_s=300), clock=clock, on_drained=drained.append)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    assert cadence.wait_s(clock.now) == 0  # the first turn at once
    await cadence.ready(never)
    clock.now += 5
    assert cadence.wait_s(clock.now) == 0  # draining: the rest of the log goes too
    cadence.drained()
    assert drained == [T0 + 5] and cadence.turns == 1
    assert cadence.wait_s(clock.now) == 295  # the next turn 300 s after this one started
    clock.now = T0 + 300
    assert cadence.wait_s(clock.now) == 0


async def test_a_scheduled_link_ships_only_inside_its_window_and_a_closing_window_stops_it() -> None:
    clock = Clock(T0)
    window = link_cadence(
        [parse_sync({"mode": "scheduled", "window": "0 2 * * *", "window_s": 600}, "n", REGIONS)], "eu-west-1"
    )
    cadence = Cadence(window, clock=clock)
    assert cadence.wait_s(clock.now) == 60
    clock.now += 60
    assert cadence.wait_s(clock.now) == 0
    clock.now += 600
    assert cadence.wait_s(clock.now) == 86_400 - 600  # closed until tomorrow's 02:00


async def test_a_waiting_link_stops_waiting_when_its_stream_ends() -> None:
    cadence = Cadence(LinkCadence("batch", interval_s=3600))
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    await cadence.ready(never)
    cadence.drained()
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ended.set_result(None)
    await asyncio.wait_for(cadence.ready(ended), 5.0)
    assert cadence.turns == 1
