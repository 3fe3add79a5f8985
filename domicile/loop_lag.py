"""Event-loop lag: how late the loop runs a timer. Anything that blocks the loop (a read, a
large value to decrypt, CPU work) delays every call the process serves by as much, and shows up
here first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NoReturn

INTERVAL_S = 0.5
# The histogram's checks: a stall of a tenth of a second is seen whenever it falls, for about
# twenty timer wake-ups a second.
SAMPLED_INTERVAL_S = 0.05


async def watch_loop_lag(record: Callable[[float], None], interval_s: float = INTERVAL_S) -> NoReturn:
    """Sleeps `interval_s` over and over, and records after each sleep how much later than asked
    it woke (seconds, never negative). Runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        record(max(0.0, loop.time() - started - interval_s))
