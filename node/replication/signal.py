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

    def mark(self) -> asyncio.Event:
        """What the next notify() sets. A waiter that reads the log off the event loop takes the
        mark before reading and waits on it after, so a notify that comes in between (the log
        grew after the read) is not missed."""
        return self._event

    async def wait(self, timeout_s: float, mark: asyncio.Event | None = None) -> None:
        event = self._event if mark is None else mark
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)
