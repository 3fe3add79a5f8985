"""Wakes the link senders when the change log grows, each only for what it carries.

A node has a link to every region a namespace of it is held in, and every commit used to wake
every link: on a node with six regions, a write to a namespace held in two of them woke the four
other links too, each of which read the log tail, skipped the entry and went back to waiting.
That was most of what a write cost the senders. So a sender waits for the namespaces its link
carries: notify() reads from the log tail which namespaces the entries since the last notify
belong to, and wakes only their waiters. When it cannot tell (no tail, or the tail no longer
holds those entries) it wakes every waiter, as before. A link that is not woken still reads the
log when the log has passed a position it names (so that it never falls further behind than a
batch read, and reads from the tail, not the store) or when its wait times out
(node.replication.outbound): that is how the position past entries it skips reaches its target
(node.replication.held_position).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from node.engine.log_tail import LogTail

# A read of the tail that takes everything after a position.
_ALL = 1 << 62


class LogSignal:
    """Futures shared by the waiters of one burst of growth, one for any growth and one per
    namespace: a notify resolves those it concerns, and the next mark makes new ones. Waiting
    on a future costs no task (a sender waits on it beside its ack reader with asyncio.wait),
    where an Event's wait() needs one per waiter and wait, on every link, for every batch."""

    def __init__(self, log_tail: LogTail | None = None) -> None:
        # Where notify() learns what was written; without it every notify wakes every waiter.
        self.log_tail = log_tail
        self._next: asyncio.Future[None] | None = None
        self._by_namespace: dict[str, asyncio.Future[None]] = {}
        # Waiters for the log to pass a position, by waiter: (position, future), one per link.
        self._past: dict[object, tuple[int, asyncio.Future[None]]] = {}
        # The log position up to which notify() has looked at what was written.
        self._seen: int | None = None

    def notify(self) -> None:
        # Waiters see exactly one wake-up per notify burst; later waiters wait for the next one.
        # Called on the event loop (after a commit).
        written = self._written()
        future, self._next = self._next, None
        if future is not None and not future.done():
            future.set_result(None)
        if not self._by_namespace and not self._past:
            return
        futures: list[asyncio.Future[None]]
        if written is None:
            futures = [*self._by_namespace.values(), *(f for _, f in self._past.values())]
            self._by_namespace.clear()
            self._past.clear()
        else:
            futures = [f for ns in written if (f := self._by_namespace.pop(ns, None)) is not None]
            end = self._seen if self._seen is not None else 0
            for waiter, (position, f) in list(self._past.items()):
                if position <= end:
                    futures.append(f)
                    del self._past[waiter]
        for f in futures:
            if not f.done():
                f.set_result(None)

    def _written(self) -> frozenset[str] | None:
        """The namespaces of the entries committed since the last call; None when unknown. Reads
        the tail only while someone waits for a namespace (otherwise it only moves on)."""
        tail = self.log_tail
        last = tail.last_lsn if tail is not None else None
        seen, self._seen = self._seen, last
        if tail is None or last is None or seen is None or last < seen:
            return None
        if last == seen or not self._by_namespace:
            return frozenset()
        read = tail.read(seen, _ALL)
        if read is None:
            return None
        entries, end = read
        self._seen = end
        return frozenset(m.namespace for m in entries)

    def mark(self) -> asyncio.Future[None]:
        """What the next notify() resolves. A waiter that reads the log off the event loop takes
        the mark before reading and waits on it after, so a notify that comes in between (the
        log grew after the read) is not missed. Shared: wait on it, never cancel it."""
        if self._next is None or self._next.done():
            self._next = asyncio.get_running_loop().create_future()
        return self._next

    def mark_for(self, waiter: object, namespaces: Iterable[str], past: int) -> list[asyncio.Future[None]]:
        """mark() for a waiter that needs waking only when an entry of one of these namespaces
        is committed, when the log passes position `past`, or when notify cannot tell what was
        written: wait until any of the futures is done. `waiter` names who waits (its sender):
        its next mark replaces this one."""
        loop = asyncio.get_running_loop()
        marks = []
        for namespace in namespaces:
            future = self._by_namespace.get(namespace)
            if future is None or future.done():
                future = self._by_namespace[namespace] = loop.create_future()
            marks.append(future)
        future = loop.create_future()
        self._past[waiter] = (past, future)
        marks.append(future)
        return marks

    def forget(self, waiter: object) -> None:
        """Drops what `waiter` waits for (its sender stopped)."""
        self._past.pop(waiter, None)

    async def wait(self, timeout_s: float, mark: asyncio.Future[None] | None = None) -> None:
        """Until the next notify (or the one `mark` was taken before), at most timeout_s."""
        await asyncio.wait({mark if mark is not None else self.mark()}, timeout=timeout_s)
