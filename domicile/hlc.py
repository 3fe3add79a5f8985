"""Hybrid logical clock: physical milliseconds in the high bits, a logical counter in the low
16, so that timestamps order causally related events even when wall clocks drift, and stay
close to wall time for lag measurement and retention."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def physical_ms(hlc: int) -> int:
    return hlc >> LOGICAL_BITS


def pack(ms: int, logical: int) -> int:
    return (ms << LOGICAL_BITS) | logical


class HybridClock:
    """Thread-safe HLC. `clock` returns wall time in milliseconds (injectable for tests)."""

    def __init__(self, clock: Callable[[], int] = wall_ms) -> None:
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        """A timestamp greater than every one this clock has issued or observed."""
        with self._lock:
            candidate = pack(self._clock(), 0)
            self._last = candidate if candidate > self._last else self._advance(self._last)
            return self._last

    def observe(self, remote: int) -> int:
        """Merges a timestamp received from another node (so later local events order after it)."""
        with self._lock:
            candidate = max(pack(self._clock(), 0), remote)
            self._last = candidate if candidate > self._last else self._advance(self._last)
            return self._last

    @staticmethod
    def _advance(hlc: int) -> int:
        # When the logical counter would overflow, borrow a millisecond rather than wrap.
        return hlc + 1
