"""Group commit: one writer thread owns every write to the engine.

Concurrent Puts queue their writes; the writer takes whatever is waiting (up to
batch_records_max) and commits it in one durable transaction, so one fsync serves many writers.
Other write jobs (remote applies, acks) run on the same thread, in queue order, so the engine
only ever sees one writer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from domicile.errors import DomicileError, InvalidArgument, ResourceExhausted, Unavailable
from node.engine.base import Committed, LocalWrite, StorageEngine

T = TypeVar("T")

QUEUE_JOBS_MAX_DEFAULT = 1024


@dataclass
class _Waiter(Generic[T]):
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]

    def deliver(self, result: T | BaseException) -> None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle, self.future, result)


@dataclass
class _WriteItem:
    write: LocalWrite
    waiter: _Waiter[Committed]


@dataclass
class _JobItem:
    fn: Callable[[StorageEngine], Any]
    waiter: _Waiter[Any]


def _settle(future: asyncio.Future[Any], result: object) -> None:
    if future.done():
        return  # the caller was cancelled; the write still happened
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class GroupCommitter:
    """The single writer of one engine. Start it, submit from any event loop, stop it."""

    def __init__(
        self,
        engine: StorageEngine,
        stamp: Callable[[], int],
        *,
        batch_records_max: int,
        queue_records_max: int,
        queue_jobs_max: int = QUEUE_JOBS_MAX_DEFAULT,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        for name, value in (
            ("batch_records_max", batch_records_max),
            ("queue_records_max", queue_records_max),
            ("queue_jobs_max", queue_jobs_max),
        ):
            if value < 1:
                raise InvalidArgument(f"{name} is {value}; it must be at least 1")
        self.engine = engine
        self._stamp = stamp
        # Called on the writer thread with the size of every committed batch (metrics).
        self._on_batch = on_batch
        self.batch_records_max = batch_records_max
        self.queue_records_max = queue_records_max
        self.queue_jobs_max = queue_jobs_max
        self._queue: collections.deque[_WriteItem | _JobItem] = collections.deque()
        self._queued_records = 0
        self._queued_jobs = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._stopping = False
        # Metrics; written by the writer thread only.
        self.batches_committed = 0
        self.records_committed = 0
        self.last_batch_records = 0
        self.jobs_run = 0

    @property
    def queued_records(self) -> int:
        return self._queued_records

    @property
    def queued_jobs(self) -> int:
        return self._queued_jobs

    @property
    def running(self) -> bool:
        return self._accepting

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                raise Unavailable("the group committer was already started; create a new one")
            self._thread = threading.Thread(target=self._writer, name="domicile-group-commit", daemon=True)
            self._accepting = True
            self._thread.start()

    async def submit(self, write: LocalWrite) -> Committed:
        """Commits one local write durably, together with whatever else is queued."""
        loop = asyncio.get_running_loop()
        waiter: _Waiter[Committed] = _Waiter(loop, loop.create_future())
        with self._cond:
            self._check_accepting()
            if self._queued_records >= self.queue_records_max:
                raise ResourceExhausted(
                    f"write queue is full ({self.queue_records_max} writes waiting); "
                    "retry after a short back-off"
                )
            self._queue.append(_WriteItem(write, waiter))
            self._queued_records += 1
            self._cond.notify()
        return await waiter.future

    async def run(self, fn: Callable[[StorageEngine], T]) -> T:
        """Runs fn(engine) on the writer thread, after every write queued before it."""
        loop = asyncio.get_running_loop()
        waiter: _Waiter[T] = _Waiter(loop, loop.create_future())
        with self._cond:
            self._check_accepting()
            if self._queued_jobs >= self.queue_jobs_max:
                raise ResourceExhausted(
                    f"write job queue is full ({self.queue_jobs_max} jobs waiting); "
                    "retry after a short back-off"
                )
            self._queue.append(_JobItem(fn, waiter))
            self._queued_jobs += 1
            self._cond.notify()
        return await waiter.future

    async def stop(self) -> None:
        """Stops accepting, commits everything already accepted, then ends the writer thread."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Like stop(), for callers without an event loop. Blocks until the queue is drained."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _check_accepting(self) -> None:
        if not self._accepting:
            state = "stopped" if self._stopping else "not started"
            raise Unavailable(f"the write path is {state}; retry on a running node")

    def _next(self) -> list[_WriteItem] | _JobItem | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            if isinstance(first, _JobItem):
                self._queued_jobs -= 1
                return first
            batch = [first]
            while self._queue and len(batch) < self.batch_records_max:
                item = self._queue[0]
                if not isinstance(item, _WriteItem):
                    break  # a job waits for the writes queued before it, and later writes wait for it
                self._queue.popleft()
                batch.append(item)
            self._queued_records -= len(batch)
            return batch

    def _writer(self) -> None:
        try:
            while (work := self._next()) is not None:
                if isinstance(work, _JobItem):
                    self._run_job(work)
                else:
                    self._commit(work)
        finally:
            self._fail_remaining()

    def _run_job(self, job: _JobItem) -> None:
        try:
            result = job.fn(self.engine)
        except Exception as error:
            self.jobs_run += 1
            job.waiter.deliver(error)
        else:
            self.jobs_run += 1
            job.waiter.deliver(result)

    def _commit(self, batch: list[_WriteItem]) -> None:
        try:
            results = self.engine.commit_local([item.write for item in batch], self._stamp)
            if len(results) != len(batch):
                raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} writes")
        except Exception as error:
            # The engine failed the whole batch: every writer in it gets the same failure.
            for item in batch:
                item.waiter.deliver(error)
            return
        # Counters first, so that a caller who got its result sees them include its batch.
        self.batches_committed += 1
        self.records_committed += sum(not isinstance(r, DomicileError) for r in results)
        self.last_batch_records = len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for item, result in zip(batch, results, strict=True):
            item.waiter.deliver(result)

    def _fail_remaining(self) -> None:
        # Reached only when the writer thread dies abnormally (or after a drain, with nothing left).
        with self._cond:
            self._accepting = False
            self._stopping = True
            remaining = list(self._queue)
            self._queue.clear()
            self._queued_records = 0
            self._queued_jobs = 0
        for item in remaining:
            item.waiter.deliver(Unavailable("the write path stopped before this write ran; retry"))
