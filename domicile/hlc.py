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
    """Thread-safe HLC. `clock` returns wall time in milliseconds (injectable for tests).

    Without persistence (the default) the clock starts from the wall clock, so a restart with
    the wall clock set back would issue timestamps below those issued before. `persist()`
    closes that gap: the clock then never issues a timestamp past a reserved ceiling until the
    ceiling is durably stored, and it restarts above the stored one."""

    def __init__(self, clock: Callable[[], int] = wall_ms) -> None:
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()
        self._reserve: Callable[[int], None] | None = None
        self._ceiling_ms = 0
        self._step_ms = 0
        # True while the wall clock is known to run too far ahead (node.clock_guard): the clock
        # then issues nothing from it, so that no timestamp of that time is kept or persisted.
        self.wall_distrusted: Callable[[], bool] = lambda: False

    def persist(self, ceiling_ms: int, reserve: Callable[[int], None], step_ms: int) -> None:
        """Resumes above `ceiling_ms` (every timestamp issued before the restart had at most
        that physical part) and from now on calls `reserve(ms)`, which must store ms durably,
        before issuing a timestamp past the stored ceiling. The ceiling moves `step_ms` ahead of
        the timestamp that needed it, so a busy clock stores once per step, not once per tick;
        a restart therefore resumes at most one step ahead of the old wall time."""
        if step_ms < 1:
            raise ValueError(f"reserve step is {step_ms} ms; it must be at least 1")
        with self._lock:
            self._last = max(self._last, pack(ceiling_ms, LOGICAL_MASK))
            self._ceiling_ms = max(ceiling_ms, physical_ms(self._last))
            self._reserve = reserve
            self._step_ms = step_ms

    def now(self) -> int:
        """A timestamp greater than every one this clock has issued or observed. While the wall
        clock is distrusted, the answer is not recorded: the next one may be lower (only the
        audit trail stamps times then; writes are refused)."""
        if self.wall_distrusted():
            with self._lock:
                return max(pack(self._clock(), 0), self._advance(self._last))
        with self._lock:
            candidate = pack(self._clock(), 0)
            return self._issue(candidate if candidate > self._last else self._advance(self._last))

    def wall_ms(self) -> int:
        """The wall clock this HLC reads (ms)."""
        return self._clock()

    def last_physical_ms(self) -> int:
        """The physical part (ms) of the latest timestamp issued or observed; 0 before any.
        Asked at every timestamp (node.clock_guard): one read of an int needs no lock."""
        return physical_ms(self._last)

    def observe(self, remote: int) -> int:
        """Merges a timestamp received from another node (so later local events order after it)."""
        distrusted = self.wall_distrusted()
        with self._lock:
            candidate = max(0 if distrusted else pack(self._clock(), 0), remote)
            return self._issue(candidate if candidate > self._last else self._advance(self._last))

    def _issue(self, hlc: int) -> int:
        # Called with the lock held. A failing reserve issues nothing (the error propagates).
        if self._reserve is not None and physical_ms(hlc) > self._ceiling_ms:
            ceiling = physical_ms(hlc) + self._step_ms
            self._reserve(ceiling)
            self._ceiling_ms = ceiling
        self._last = hlc
        return hlc

    @staticmethod
    def _advance(hlc: int) -> int:
        # When the logical counter would overflow, borrow a millisecond rather than wrap.
        return hlc + 1
