"""The event-loop lag monitor sees the loop being blocked."""

from __future__ import annotations

import asyncio
import time

from domicile.loop_lag import watch_loop_lag


async def test_a_blocked_loop_shows_as_lag():
    lags: list[float] = []
    woke = asyncio.Event()

    def record(lag: float) -> None:
        lags.append(lag)
        woke.set()

    watcher = asyncio.create_task(watch_loop_lag(record, interval_s=0.02))
    try:
        await asyncio.wait_for(woke.wait(), 5.0)  # the watcher is sleeping now
        woke.clear()
        time.sleep(0.3)  # noqa: ASYNC251 - blocks the loop, as a read on it would
        await asyncio.wait_for(woke.wait(), 5.0)
    finally:
        watcher.cancel()
    assert lags[-1] >= 0.25
    assert all(lag >= 0.0 for lag in lags)
