"""One writer thread fed by a bounded queue, for stores where one thread owns every write.

Callers put items from any thread (an event loop, typically); the writer takes whatever is
waiting, up to batch_max items, and hands the batch to `handle`, so that one durable commit
serves many callers. An item put with put_solo() is handed over alone, after everything queued
before it and before everything queued after it (a job that needs the store to itself).

With `linger_s`, the writer holds a batch open for more items while none of those queued is
urgent: items put with urgent=False (nobody waits on them, such as the audit entries a store's
commit already carries) then share one commit with those of the next linger_s seconds instead
of paying a commit each. An urgent item, a full batch, hurry(), a stop or a failure ends the
wait at once.

The queue is bounded and fails closed: a put over the bound raises ResourceExhausted at once
and queues nothing. `handle` answers each item of its batch; when it raises, `reject` answers
every item of the batch with that error and the writer goes on, unless fail() was called. When
the writer ends (stopped, or failed), items still queued are rejected with the error `stopped`
builds.

States: new -> running -> closing -> closed; running -> failed when fail() is called (the
writer stops after its current batch; stop() still ends in closed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from domicile.errors import InvalidArgument, ResourceExhausted

log = logging.getLogger("domicile.single_writer")

T = TypeVar("T")
R = TypeVar("R")

NEW = "new"
RUNNING = "running"
CLOSING = "closing"
CLOSED = "closed"
FAILED = "failed"
# The longest a writer may hold a batch open for more items (linger_s).
LINGER_MAX_S = 1.0


@dataclass
class LoopWaiter(Generic[R]):
    """Hands a result from the writer thread to a future of the caller's event loop."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[R]

    def deliver(self, result: R | BaseException) -> None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle, self.future, result)


def deliver_all(deliveries: Sequence[tuple[LoopWaiter[Any], object]]) -> None:
    """Hands many results at once: one wake-up of each caller's loop for the lot, not one per
    result (a batch of a thousand writes would otherwise queue a thousand callbacks, each with
    its own write to the loop's wake-up pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], object]]] = {}
    for waiter, result in deliveries:
        by_loop.setdefault(waiter.loop, []).append((waiter.future, result))
    for loop, settles in by_loop.items():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_all, settles)


def _settle_all(settles: list[tuple[asyncio.Future[Any], object]]) -> None:
    for future, result in settles:
        _settle(future, result)


def _settle(future: asyncio.Future[Any], result: object) -> None:
    if future.done():
        return  # the caller was cancelled; the item was handled all the same
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class _Solo(Generic[T]):
    __slots__ = ("item",)

    def __init__(self, item: T) -> None:
        self.item = item


class SingleWriter(Generic[T]):
    """The queue and thread of one writer. `handle` and `reject` run on the writer thread."""

    def __init__(
        self,
        handle: Callable[[list[T]], None],
        reject: Callable[[list[T], Exception], None],
        *,
        name: str,
        batch_max: int,
        queue_max: int,
        full_message: str,
        refused: Callable[[str, str], Exception],
        stopped: Callable[[str], Exception],
        solo_max: int = 0,
        solo_full_message: str = "",
        on_batch: Callable[[int, float], None] | None = None,
        on_exit: Callable[[], None] | None = None,
        linger_s: float = 0.0,
    ) -> None:
        """`refused(state, failure)` builds the error of a put while not running;
        `stopped(failure)` the error of items left when the writer ends; `on_batch(size,
        seconds)` observes each batch handled without error; `on_exit` runs last on the
        writer thread (to close what the writer owns); `linger_s` how long a batch of items
        nobody waits on may wait for more (0: handed over at once)."""
        for what, value, least in (
            ("batch_max", batch_max, 1),
            ("queue_max", queue_max, 1),
            ("solo_max", solo_max, 0),
        ):
            if value < least:
                raise InvalidArgument(f"{what} is {value}; it must be at least {least}")
        if not 0.0 <= linger_s <= LINGER_MAX_S:
            raise InvalidArgument(f"linger_s is {linger_s}; it must be 0 to {LINGER_MAX_S} seconds")
        self.name = name
        self.batch_max = batch_max
        self.queue_max = queue_max
        self.solo_max = solo_max
        self._handle = handle
        self._reject = reject
        self._full_message = full_message
        self._solo_full_message = solo_full_message
        self._refused = refused
        self._stopped = stopped
        self._on_batch = on_batch
        self._on_exit = on_exit
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        # Producers waiting for the queue to fall below a mark (wait_room), woken when the
        # writer takes a batch. A condition of its own on the same lock, so that a put's
        # notify() for the writer never lands on one of them instead.
        self._room = threading.Condition(lock)
        self._room_waiters = 0
        self._queue: collections.deque[T | _Solo[T]] = collections.deque()
        self._queued = 0
        self._queued_solo = 0
        self._state = NEW
        self._failure = ""
        self._thread: threading.Thread | None = None
        self.linger_s = linger_s
        # While lingering: when the oldest queued item arrived, whether an item someone waits
        # on is queued (or hurry() was called), and whether the writer waits for more now.
        self._since = 0.0
        self._urgent = False
        self._lingering = False

    @property
    def state(self) -> str:
        return self._state

    @property
    def failure(self) -> str:
        """Why the writer failed; empty unless fail() was called."""
        return self._failure

    @property
    def queued(self) -> int:
        """Items waiting to be batched."""
        return self._queued

    @property
    def queued_solo(self) -> int:
        """Items waiting to be handled alone."""
        return self._queued_solo

    def start(self) -> None:
        with self._cond:
            if self._state != NEW:
                raise RuntimeError(f"the {self.name} writer is {self._state}; create a new one")
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._state = RUNNING
            self._thread.start()

    def put(self, item: T, *, bounded: bool = True, urgent: bool = True) -> None:
        """Queues an item to be handled in a batch; raises instead when not running or full.
        `bounded=False` skips the queue bound, for a producer whose own queue bounds it and
        which must not lose the item. `urgent=False`: nobody waits on the item, so a lingering
        writer may hold it (see linger_s)."""
        with self._cond:
            if self._state != RUNNING:
                raise self._refused(self._state, self._failure)
            if bounded and self._queued >= self.queue_max:
                raise ResourceExhausted(self._full_message)
            self._wake_for(1, urgent)
            self._queue.append(item)
            self._queued += 1

    def put_many(self, items: list[T], *, bounded: bool = True, urgent: bool = True) -> None:
        """Queues items together (the writer sees all of them or none), so that they land in
        one batch unless they pass batch_max; raises instead when not running, or when they do
        not all fit (nothing is queued then). `bounded=False` and `urgent` as for put()."""
        with self._cond:
            if self._state != RUNNING:
                raise self._refused(self._state, self._failure)
            if bounded and self._queued and self._queued + len(items) > self.queue_max:
                raise ResourceExhausted(self._full_message)
            if items:
                self._wake_for(len(items), urgent)
            self._queue.extend(items)
            self._queued += len(items)

    def _wake_for(self, count: int, urgent: bool) -> None:
        """Wakes the writer, under the lock, for `count` items about to be queued when it waits
        for them. It only waits when the queue is empty, or while it lingers: waking it for
        every item would hand it the GIL once per item while the callers are busy producing them."""
        if not self._queue:
            if self.linger_s:
                self._since = time.monotonic()
                self._urgent = urgent
            self._cond.notify()
        elif self.linger_s:
            if urgent:
                self._urgent = True
            if self._lingering and (urgent or self._queued + count >= self.batch_max):
                self._cond.notify()

    def hurry(self) -> None:
        """Ends a linger now: what is queued is handed over without waiting for more (someone
        waits for it, such as a flush)."""
        with self._cond:
            if self._queue:
                self._urgent = True
                if self._lingering:
                    self._cond.notify()

    def put_solo(self, item: T) -> None:
        """Queues an item to be handled alone, in queue order."""
        with self._cond:
            if self._state != RUNNING:
                raise self._refused(self._state, self._failure)
            if self._queued_solo >= self.solo_max:
                raise ResourceExhausted(self._solo_full_message)
            self._wake_for(1, True)
            self._queue.append(_Solo(item))
            self._queued_solo += 1

    def wait_room(self, below: int, timeout_s: float) -> bool:
        """Waits until fewer than `below` items are queued, at most timeout_s; True when they
        are, or when the writer takes no more puts (nothing more can queue). For a producer of
        unbounded puts (bounded=False) that must not run ahead of the writer: it waits here
        first. Someone waits, so a linger ends at once."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._queued < below or self._state != RUNNING:
                return True
            self._urgent = True
            if self._lingering:
                self._cond.notify()
            self._room_waiters += 1
            try:
                while self._queued >= below and self._state == RUNNING:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._room.wait(remaining)
                return True
            finally:
                self._room_waiters -= 1

    def fail(self, reason: str) -> None:
        """Stops accepting and makes the writer stop after its current batch (call it from
        `handle` before answering, so that the next put already refuses)."""
        with self._cond:
            if not self._failure:
                self._failure = reason
            if self._state == RUNNING:
                self._state = FAILED
            self._cond.notify_all()
            self._room.notify_all()

    def stop_accepting(self) -> None:
        """Refuses further puts; the writer goes on until the queue is empty."""
        with self._cond:
            if self._state == NEW:
                self._state = CLOSED
            elif self._state == RUNNING:
                self._state = CLOSING
            self._cond.notify_all()
            self._room.notify_all()

    def stop(self, timeout: float | None = None) -> bool:
        """Stops accepting, waits (at most `timeout` seconds) for the writer to handle what is
        queued and end, and moves to closed. True when the writer has ended."""
        self.stop_accepting()
        thread = self._thread
        ended = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            ended = not thread.is_alive()
        with self._cond:
            self._state = CLOSED
        return ended

    def reject_queued(self, error: Exception) -> None:
        """Answers every item still queued with `error` (a writer that did not stop in time)."""
        with self._cond:
            items = self._take_all()
        if items:
            self._reject(items, error)

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        # The batch being handled: answered if the writer ends inside it (a BaseException such
        # as SystemExit or KeyboardInterrupt), so that no caller waits for ever.
        unanswered: list[T] = []
        try:
            while (batch := self._take()) is not None:
                unanswered = batch
                started = time.perf_counter() if self._on_batch is not None else 0.0
                try:
                    self._handle(batch)
                except Exception as error:
                    unanswered = []
                    self._reject(batch, error)
                    continue
                unanswered = []
                if self._on_batch is not None:
                    try:
                        self._on_batch(len(batch), time.perf_counter() - started)
                    except Exception:
                        # A metrics hook must not stop the writer: the batch is done.
                        log.exception("the %s batch hook failed", self.name)
        except BaseException as error:
            self.fail(f"the writer stopped: {error}")
            if unanswered:
                self._reject(unanswered, self._stopped(self._failure))
            raise
        finally:
            with self._cond:
                items = self._take_all()
            if items:
                self._reject(items, self._stopped(self._failure))
            if self._on_exit is not None:
                self._on_exit()

    def _take(self) -> list[T] | None:
        with self._cond:
            queue = self._queue
            while True:
                while not queue:
                    if self._state != RUNNING:
                        return None
                    self._cond.wait()
                if self._failure:
                    return None
                if not self.linger_s:
                    break
                self._linger()
                if self._failure:
                    return None
                if queue:
                    break
                # Emptied while lingering (reject_queued): wait for the next item again.
            if not self._queued_solo:
                batch = cast("list[T]", [queue.popleft() for _ in range(min(len(queue), self.batch_max))])
            else:
                first = queue[0]
                if isinstance(first, _Solo):
                    queue.popleft()
                    self._queued_solo -= 1
                    return [first.item]
                batch = []
                while queue and len(batch) < self.batch_max:
                    item = queue[0]
                    if isinstance(item, _Solo):
                        break  # a solo item waits for the items queued before it, and later ones for it
                    queue.popleft()
                    batch.append(item)
            self._queued -= len(batch)
            if not queue:
                self._urgent = False
            if self._room_waiters:
                self._room.notify_all()
            return batch

    def _linger(self) -> None:
        """Waits, under the lock, until the oldest queued item is linger_s old, unless one
        queued is urgent, a batch is full, a solo item waits, or the writer stops or fails."""
        try:
            while (
                not self._urgent
                and not self._queued_solo
                and self._queued < self.batch_max
                and self._state == RUNNING
            ):
                remaining = self._since + self.linger_s - time.monotonic()
                if remaining <= 0:
                    return
                self._lingering = True
                self._cond.wait(remaining)
        finally:
            self._lingering = False

    def _take_all(self) -> list[T]:
        items = [item.item if isinstance(item, _Solo) else item for item in self._queue]
        self._queue.clear()
        self._queued = 0
        self._queued_solo = 0
        self._room.notify_all()
        return items
