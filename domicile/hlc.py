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
        # Reservations store one at a time, so the stored ceiling only grows; _stored_ms is the
        # highest stored (written under _reserve_lock). The clock's _lock may be held while
        # waiting for _reserve_lock, never the other way round.
        self._reserve_lock = threading.Lock()
        self._stored_ms = 0
        # Runs an early reservation off the clock's lock (persist(early=...)); None: none.
        self._early: Callable[[Callable[[], None]], None] | None = None
        self._early_running = False
        # True while the wall clock is known to run too far ahead (node.clock_guard): the clock
        # then issues nothing from it, so that no timestamp of that time is kept or persisted.
        self.wall_distrusted: Callable[[], bool] = lambda: False

    def persist(
        self,
        ceiling_ms: int,
        reserve: Callable[[int], None],
        step_ms: int,
        *,
        early: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """Resumes above `ceiling_ms` (every timestamp issued before the restart had at most
        that physical part) and from now on calls `reserve(ms)`, which must store ms durably,
        before issuing a timestamp past the stored ceiling. The ceiling moves `step_ms` ahead of
        the timestamp that needed it, so a busy clock stores once per step, not once per tick;
        a restart therefore resumes at most one step ahead of the old wall time.

        With `early` (given a function, runs it in the background, e.g. on a thread), the next
        step is stored ahead, once a timestamp comes within half a step of the ceiling: the
        caller that would have waited for the store (a write on the writer thread, an audit
        entry or a replicated apply on the event loop, once a step) finds it done. A timestamp
        past the stored ceiling still waits for its store, whatever the early one is doing."""
        if step_ms < 1:
            raise ValueError(f"reserve step is {step_ms} ms; it must be at least 1")
        with self._lock:
            self._last = max(self._last, pack(ceiling_ms, LOGICAL_MASK))
            self._ceiling_ms = max(ceiling_ms, physical_ms(self._last))
            self._reserve = reserve
            self._step_ms = step_ms
            self._early = early
            with self._reserve_lock:
                self._stored_ms = max(self._stored_ms, ceiling_ms)

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

    def block(self, n: int) -> range:
        """n timestamps at once, for a batch of writes: what n calls of now() in a row give
        while the wall clock stays in one millisecond (each greater than every timestamp issued
        or observed before, later ones greater still), for one lock and one wall-clock read.
        Empty while the wall clock is distrusted: the caller then asks now() for each, whose
        answers are not recorded."""
        if n < 1:
            raise ValueError(f"a block of {n} timestamps; ask for at least 1")
        if self.wall_distrusted():
            return range(0)
        with self._lock:
            candidate = pack(self._clock(), 0)
            first = candidate if candidate > self._last else self._advance(self._last)
            # Past the logical counter, the block borrows milliseconds as _advance does.
            return range(first, self._issue(first + n - 1) + 1)

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
        reserve = self._reserve
        if reserve is not None:
            ms = physical_ms(hlc)
            if ms > self._ceiling_ms:
                with self._reserve_lock:
                    # An early reservation may have stored past it meanwhile.
                    if ms > self._stored_ms:
                        reserve(ms + self._step_ms)
                        self._stored_ms = ms + self._step_ms
                    self._ceiling_ms = self._stored_ms
            elif (
                self._early is not None
                and not self._early_running
                and ms > self._ceiling_ms - self._step_ms // 2
            ):
                self._early_running = True
                try:
                    self._early(self._reserve_early)
                except Exception:
                    # Nothing started: the timestamp past the ceiling stores it as without.
                    self._early_running = False
        self._last = hlc
        return hlc

    def _reserve_early(self) -> None:
        """Stores the next step ahead of the ceiling; runs off the clock's lock. A failure is
        left to the timestamp that needs the step: it stores it itself (and fails if it cannot)."""
        try:
            with self._reserve_lock:
                reserve = self._reserve
                ceiling = self._ceiling_ms + self._step_ms
                if reserve is not None and ceiling > self._stored_ms:
                    reserve(ceiling)
                    self._stored_ms = ceiling
        except Exception:
            pass
        finally:
            with self._lock:
                self._ceiling_ms = max(self._ceiling_ms, self._stored_ms)
                self._early_running = False

    @staticmethod
    def _advance(hlc: int) -> int:
        # When the logical counter would overflow, borrow a millisecond rather than wrap.
        return hlc + 1
