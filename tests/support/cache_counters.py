"""What the read cache's tests count in place of the node's metrics (node.cache's counters
protocol): how many hits, misses, refused fills, fallbacks and resets, by name."""

from __future__ import annotations

import threading


class CountedCache:
    """Counts each event by name ("hit", "miss", "fill_refused:REASON", "fallback:REASON",
    "reset:REASON"), from any thread."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _add(self, name: str) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def hit(self) -> None:
        self._add("hit")

    def miss(self) -> None:
        self._add("miss")

    def fill_refused(self, reason: str) -> None:
        self._add(f"fill_refused:{reason}")

    def fallback(self, reason: str) -> None:
        self._add(f"fallback:{reason}")

    def entries(self, count: int) -> None:
        pass

    def reset(self, reason: str) -> None:
        self._add(f"reset:{reason}")
