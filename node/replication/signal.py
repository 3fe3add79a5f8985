"""Wakes the link senders when the change log grows."""

from __future__ import annotations

import asyncio
import contextlib


class LogSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        # Replace the event after setting it so that waiters see exactly one wake-up per notify
        # burst, and later waiters wait for the next one.
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)
