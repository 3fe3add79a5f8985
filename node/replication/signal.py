"""Wakes the link senders when the change log grows."""

from __future__ import annotations

import asyncio


class LogSignal:
    """One future per burst of growth, shared by every waiting sender: a notify resolves it,
    and the next mark() makes a new one. Waiting on a future costs no task (a sender waits on
    it beside its ack reader with asyncio.wait), where an Event's wait() needs one per waiter
    and wait, on every link, for every batch."""

    def __init__(self) -> None:
        self._next: asyncio.Future[None] | None = None

    def notify(self) -> None:
        # Waiters see exactly one wake-up per notify burst; later waiters wait for the next one.
        # Called on the event loop (after a commit); without a waiter it costs nothing.
        future, self._next = self._next, None
        if future is not None and not future.done():
            future.set_result(None)

    def mark(self) -> asyncio.Future[None]:
        """What the next notify() resolves. A waiter that reads the log off the event loop takes
        the mark before reading and waits on it after, so a notify that comes in between (the
        log grew after the read) is not missed. Shared: wait on it, never cancel it."""
        if self._next is None or self._next.done():
            self._next = asyncio.get_running_loop().create_future()
        return self._next

    async def wait(self, timeout_s: float, mark: asyncio.Future[None] | None = None) -> None:
        """Until the next notify (or the one `mark` was taken before), at most timeout_s."""
        await asyncio.wait({mark if mark is not None else self.mark()}, timeout=timeout_s)
