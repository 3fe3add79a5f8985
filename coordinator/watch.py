"""Fan-out of topology revisions (and, on a hub of their own, of the subject orders in force)
to watchers.

Each watcher has a queue of size 1 that always holds the latest unsent item: a slow watcher
skips intermediate revisions but never falls behind the newest one, and a stuck one costs one
item of memory (a reference to what every watcher shares), never more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from domicile.errors import ResourceExhausted, Unavailable

T = TypeVar("T")


class Watcher(Generic[T]):
    def __init__(self) -> None:
        # None is the end-of-stream marker put there at shutdown.
        self._slot: asyncio.Queue[T | None] = asyncio.Queue(maxsize=1)

    def offer(self, item: T | None) -> None:
        """Replaces whatever is pending with `item`; never blocks."""
        if self._slot.full():
            self._slot.get_nowait()
        self._slot.put_nowait(item)

    async def next(self) -> T | None:
        """The latest item not yet taken, or None once the hub has closed."""
        return await self._slot.get()


class WatchHub(Generic[T]):
    def __init__(self, watchers_max: int, on_count: Callable[[int], None] = lambda _: None) -> None:
        self._watchers: set[Watcher[T]] = set()
        self._watchers_max = watchers_max
        self._on_count = on_count
        self._closed = False

    @property
    def watchers_max(self) -> int:
        return self._watchers_max

    def subscribe(self) -> Watcher[T]:
        if self._closed:
            raise Unavailable("coordinator is shutting down; reconnect and resume from your last revision")
        if len(self._watchers) >= self._watchers_max:
            raise ResourceExhausted(
                f"too many topology watchers ({self._watchers_max} is the limit); retry later"
            )
        watcher: Watcher[T] = Watcher()
        self._watchers.add(watcher)
        self._on_count(len(self._watchers))
        return watcher

    def unsubscribe(self, watcher: Watcher[T]) -> None:
        if watcher in self._watchers:
            self._watchers.discard(watcher)
            self._on_count(len(self._watchers))

    def publish(self, item: T) -> None:
        for watcher in self._watchers:
            watcher.offer(item)

    def close(self) -> None:
        """Ends every watch stream; later subscriptions are refused."""
        self._closed = True
        for watcher in self._watchers:
            watcher.offer(None)

    def __len__(self) -> int:
        return len(self._watchers)
