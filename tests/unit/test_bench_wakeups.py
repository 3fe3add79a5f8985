"""The delay proxy's wake-ups: each callback runs once, never before its due time, in due order,
whether the kernel's timerfd serves them or (where there is none) the loop's own timers."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
import uvloop

from bench import wakeups as wakeups_module
from bench.wakeups import Wakeups


async def _run_in_order(wakeups: Wakeups) -> None:
    start = time.monotonic()
    ran: list[tuple[str, float]] = []
    done = asyncio.Event()
    # Asked for out of order, one of them twice over at the same time, one already past.
    plan = {"c": 0.030, "a": 0.005, "b": 0.015, "b2": 0.015, "past": -0.010}
    for name, offset in plan.items():

        def call(name: str = name) -> None:
            ran.append((name, time.monotonic()))
            if len(ran) == len(plan):
                done.set()

        wakeups.at(start + offset, call)
    await asyncio.wait_for(done.wait(), 5)
    assert [name for name, _ in ran] == ["past", "a", "b", "b2", "c"]
    for name, at in ran:
        assert at >= start + plan[name], f"{name} ran before its due time"
    wakeups.close()


async def _precise() -> None:
    wakeups = Wakeups(asyncio.get_running_loop())
    assert wakeups.precise == sys.platform.startswith("linux")
    await _run_in_order(wakeups)


def test_callbacks_run_in_due_order_and_never_early_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_precise())


async def test_callbacks_run_in_due_order_and_never_early_on_asyncio() -> None:
    await _precise()


async def test_without_a_timerfd_the_loop_timers_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wakeups_module, "_timerfd", lambda: None)
    wakeups = Wakeups(asyncio.get_running_loop())
    assert not wakeups.precise
    await _run_in_order(wakeups)


async def test_a_closed_wakeups_runs_nothing_more() -> None:
    wakeups = Wakeups(asyncio.get_running_loop())
    ran: list[int] = []
    wakeups.at(time.monotonic() + 0.01, lambda: ran.append(1))
    wakeups.close()
    await asyncio.sleep(0.05)
    assert ran == []
