"""The event-loop lag monitor sees the loop being blocked."""

from __future__ import annotations

import asyncio
import time

from domicile.loop_lag import SAMPLED_INTERVAL_S, watch_loop_lag
from node.metrics import NodeMetrics


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


async def test_the_nodes_sampled_histogram_counts_a_stall_whenever_it_falls():
    metrics = NodeMetrics("n1", "eu-west-1")
    histogram = metrics.event_loop_lag_sampled

    def stalls_over(seconds: float) -> float:
        count = slow = 0.0
        for sample in histogram.collect()[0].samples:
            if sample.name.endswith("_bucket"):
                if sample.labels["le"] == "+Inf":
                    count = sample.value
                elif float(sample.labels["le"]) == seconds:
                    slow = sample.value
        return count - slow

    watcher = asyncio.create_task(watch_loop_lag(histogram.observe, interval_s=SAMPLED_INTERVAL_S))
    try:
        await asyncio.sleep(SAMPLED_INTERVAL_S * 3)
        time.sleep(0.3)  # noqa: ASYNC251 - blocks the loop, as a read on it would
        await asyncio.sleep(SAMPLED_INTERVAL_S * 3)
    finally:
        watcher.cancel()
    assert stalls_over(0.2) >= 1
