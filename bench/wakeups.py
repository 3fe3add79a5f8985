"""Callbacks at a due time on the monotonic clock, to within the kernel's wake-up latency.

An event loop's own timers are too coarse to emulate a network delay: uvloop keeps time in
whole milliseconds (libuv's clock) and both loops wait in epoll with a timeout in milliseconds,
so a timer fires up to a millisecond late (0.8-1 ms at the median here). A proxy adding d in
each direction then adds about 2 d + 2 ms to a round trip at p99, which a figure measured
through it is charged for. On Linux, `Wakeups` arms one timerfd (CLOCK_MONOTONIC, absolute,
nanoseconds) for its earliest due time and lets the loop read it like a socket, so a callback
runs a few hundred microseconds at most after its due time. Elsewhere it falls back to the
loop's timers. The process's timer slack is also cut to 1 ns, from the default 50 us by which
the kernel may defer a wake-up to batch it with others.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import heapq
import itertools
import os
import sys
import time
from collections.abc import Callable

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _TimerFd:
    """A non-blocking timerfd on CLOCK_MONOTONIC, the clock of `time.monotonic()`."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._settime = libc.timerfd_settime
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd

    def arm(self, when: float) -> None:
        """Fire at monotonic time `when`; one in the past fires at once."""
        seconds = int(when)
        nanoseconds = max(1, int((when - seconds) * 1e9))  # all zero would disarm it
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, nanoseconds))
        if self._settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def drain(self) -> None:
        # Nothing to read when a wake-up was already taken by a timer re-armed since.
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


def _timerfd() -> _TimerFd | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
        return _TimerFd(libc)
    except (OSError, AttributeError):
        return None


class Wakeups:
    """Runs each callback given to `at` once, at or just after its due time (`time.monotonic()`
    seconds), in due order. One timer serves them all: only the earliest due time is armed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties in due time keep the order they were asked in
        self._armed_for = float("inf")
        self._fallback: asyncio.TimerHandle | None = None
        self._timer = _timerfd()
        if self._timer is not None:
            loop.add_reader(self._timer.fd, self._fire)

    @property
    def precise(self) -> bool:
        """Whether the kernel's timerfd serves (else the loop's millisecond timers)."""
        return self._timer is not None

    def at(self, due: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._due, (due, next(self._order), callback))
        if due < self._armed_for:
            self._arm(due)

    def _arm(self, due: float) -> None:
        self._armed_for = due
        if self._timer is not None:
            self._timer.arm(due)
            return
        if self._fallback is not None:
            self._fallback.cancel()
        self._fallback = self._loop.call_later(max(0.0, due - time.monotonic()), self._fire)

    def _fire(self) -> None:
        if self._timer is not None:
            self._timer.drain()
        self._fallback = None
        self._armed_for = float("inf")
        now = time.monotonic()
        due = self._due
        while due and due[0][0] <= now:
            heapq.heappop(due)[2]()
        if due:
            self._arm(due[0][0])

    def close(self) -> None:
        self._due.clear()
        if self._fallback is not None:
            self._fallback.cancel()
        if self._timer is not None:
            self._loop.remove_reader(self._timer.fd)
            self._timer.close()
            self._timer = None
