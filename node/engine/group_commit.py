"""Group commit: one writer thread owns every write to the engine.

Concurrent Puts queue their writes; the writer takes whatever is waiting (up to
batch_records_max) and commits it in one durable transaction, so one fsync serves many writers.
Other write jobs (remote applies, acks) run on the same thread, in queue order, so the engine
only ever sees one writer. The queue and the thread are a domicile.single_writer.SingleWriter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from domicile.errors import DomicileError, InvalidArgument, Unavailable
from domicile.single_writer import NEW, RUNNING, LoopWaiter, SingleWriter
from node.engine.base import Committed, LocalWrite, StorageEngine

T = TypeVar("T")

QUEUE_JOBS_MAX_DEFAULT = 1024


@dataclass
class _WriteItem:
    write: LocalWrite
    waiter: LoopWaiter[Committed]


@dataclass
class _JobItem:
    fn: Callable[[StorageEngine], Any]
    waiter: LoopWaiter[Any]


_Item = _WriteItem | _JobItem


def _refused(state: str, failure: str) -> Unavailable:
    return Unavailable(
        f"the write path is {'not started' if state == NEW else 'stopped'}; retry on a running node"
    )


def _stopped(failure: str) -> Unavailable:
    return Unavailable("the write path stopped before this write ran; retry")


def _reject(items: list[_Item], error: Exception) -> None:
    # A batch the engine failed as a whole, or items left when the writer ended: each gets the error.
    for item in items:
        item.waiter.deliver(error)


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
        # Writes are batched; a job runs alone, between the writes queued before and after it.
        self._writer: SingleWriter[_Item] = SingleWriter(
            self._handle,
            _reject,
            name="domicile-group-commit",
            batch_max=batch_records_max,
            queue_max=queue_records_max,
            full_message=(
                f"write queue is full ({queue_records_max} writes waiting); retry after a short back-off"
            ),
            solo_max=queue_jobs_max,
            solo_full_message=(
                f"write job queue is full ({queue_jobs_max} jobs waiting); retry after a short back-off"
            ),
            refused=_refused,
            stopped=_stopped,
        )
        # Metrics; written by the writer thread only.
        self.batches_committed = 0
        self.records_committed = 0
        self.last_batch_records = 0
        self.jobs_run = 0

    @property
    def queued_records(self) -> int:
        return self._writer.queued

    @property
    def queued_jobs(self) -> int:
        return self._writer.queued_solo

    @property
    def running(self) -> bool:
        return self._writer.state == RUNNING

    def start(self) -> None:
        if self._writer.state != NEW:
            raise Unavailable("the group committer was already started; create a new one")
        self._writer.start()

    async def submit(self, write: LocalWrite) -> Committed:
        """Commits one local write durably, together with whatever else is queued."""
        loop = asyncio.get_running_loop()
        waiter: LoopWaiter[Committed] = LoopWaiter(loop, loop.create_future())
        self._writer.put(_WriteItem(write, waiter))
        return await waiter.future

    async def run(self, fn: Callable[[StorageEngine], T]) -> T:
        """Runs fn(engine) on the writer thread, after every write queued before it."""
        loop = asyncio.get_running_loop()
        waiter: LoopWaiter[T] = LoopWaiter(loop, loop.create_future())
        self._writer.put_solo(_JobItem(fn, waiter))
        return await waiter.future

    async def stop(self) -> None:
        """Stops accepting, commits everything already accepted, then ends the writer thread."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Like stop(), for callers without an event loop. Blocks until the queue is drained."""
        self._writer.stop()

    def _handle(self, batch: list[_Item]) -> None:
        first = batch[0]
        if isinstance(first, _JobItem):
            self._run_job(first)
        else:
            self._commit(cast("list[_WriteItem]", batch))

    def _run_job(self, job: _JobItem) -> None:
        # A failing job is answered by _reject, like a failed batch of one.
        try:
            result = job.fn(self.engine)
        finally:
            self.jobs_run += 1
        job.waiter.deliver(result)

    def _commit(self, batch: list[_WriteItem]) -> None:
        results = self.engine.commit_local([item.write for item in batch], self._stamp)
        if len(results) != len(batch):
            raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} writes")
        # Counters first, so that a caller who got its result sees them include its batch.
        self.batches_committed += 1
        self.records_committed += sum(not isinstance(r, DomicileError) for r in results)
        self.last_batch_records = len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        for item, result in zip(batch, results, strict=True):
            item.waiter.deliver(result)
