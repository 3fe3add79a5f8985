"""Group commit: one writer thread owns every write to the engine.

Concurrent Puts queue their writes; the writer takes whatever is waiting (up to
batch_records_max) and commits it in one durable transaction, so one fsync serves many writers.
Other write jobs (remote applies, acks) run on the same thread, in queue order, so the engine
only ever sees one writer. The queue and the thread are a domicile.single_writer.SingleWriter.

Local writes reach the engine only through submit(), never through a job: every change-log entry
is then appended to the log tail (node.engine.log_tail) that the replication senders read.

`on_audit` hears, on the writer thread, the audit entries of every committed batch of local
writes (LocalWrite.audit): those the commit carried, with their change-log positions, and those
of writes that did not commit. The audit log appends them (node/compliance/audit_log.py carry()).
`audit_room` is asked first, and holds the batch back while the audit log is behind.

`on_keys_changed` hears, on the writer thread, which keys every durable change touched (the
writes of a committed batch; the applied mutations of a job that returns an ApplyOutcome, that
is a replicated apply; the keys a job declares it may change, such as a bootstrap's prune or a
tombstone purge), before any caller hears back: the read cache (node/cache/) keeps those keys out
of its answers until their entries are invalidated. A batch or a job the engine fails is
reported too, before it is rejected: a commit whose answer was lost may be durable all the same
(node.engine.base.CommitOutcomeUnknown, which names the keys it wrote), and reporting a key that
did not change costs only a cache miss. `on_keys_changing` hears the same keys (those of a
batch's writes, those a job declares or touches) before the engine runs, and `on_keys_settled`
once it has run and `on_keys_changed` has heard: a reader of the engine can see a commit before
`on_keys_changed` runs, and the cache must not answer with what the key held before meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from domicile.audit import AuditEntry
from domicile.errors import DomicileError, InvalidArgument, ResourceExhausted, Unavailable
from domicile.single_writer import NEW, RUNNING, LoopWaiter, SingleWriter, deliver_all
from node.engine.base import ApplyOutcome, CommitOutcomeUnknown, Committed, LocalWrite, StorageEngine
from node.engine.log_tail import LogTail

log = logging.getLogger("domicile.group_commit")
T = TypeVar("T")

QUEUE_JOBS_MAX_DEFAULT = 1024
# Without a bound of its own, the byte bound is what the record bound allows at the value limit.
QUEUE_BYTES_MAX_DEFAULT = 1 << 62


class _Batch:
    """The one future of a submit_many call: each of its writes fills its slot as it is
    answered, and the future gets the slots once all are, so that a call of a thousand writes
    makes one future and one loop callback, not a thousand. Its writes can be answered in two
    commits (batch_records_max, or a queue ahead of them), or on two threads (the writer, and
    reject_queued on a writer that did not stop): slots are filled under a lock."""

    __slots__ = ("_lock", "_remaining", "results", "waiter")

    def __init__(self, waiter: LoopWaiter[list[object]], size: int) -> None:
        self.waiter = waiter
        # Committed, or the exception that answered the write.
        self.results: list[object] = [None] * size
        self._remaining = size
        self._lock = threading.Lock()

    def fill(self, slot: int, result: object) -> bool:
        """Fills a slot; True when it was the last one (the caller delivers the results)."""
        with self._lock:
            self.results[slot] = result
            self._remaining -= 1
            return self._remaining == 0


class _WriteItem:
    """A queued local write and how its result reaches its caller: a waiter of its own
    (submit), or a slot of its call's _Batch (submit_many)."""

    __slots__ = ("batch", "size", "slot", "waiter", "write")

    def __init__(
        self,
        write: LocalWrite,
        waiter: LoopWaiter[Committed] | None,
        batch: _Batch | None = None,
        slot: int = 0,
    ) -> None:
        self.write = write
        self.waiter = waiter
        self.batch = batch
        self.slot = slot
        # Value bytes this write holds in the queue, until it is committed or refused.
        self.size = len(write.value)

    def answer(self, result: object) -> tuple[LoopWaiter[Any], object] | None:
        """What to deliver for this write's result: to its own waiter, or its batch's results
        once this was the last of them; None while its batch still waits for others."""
        if self.waiter is not None:
            return self.waiter, result
        batch = cast("_Batch", self.batch)
        return (batch.waiter, batch.results) if batch.fill(self.slot, result) else None


@dataclass
class _JobItem:
    fn: Callable[[StorageEngine], Any]
    waiter: LoopWaiter[Any]
    # The key states the job may change, reported whether it returns or raises.
    keys: tuple[tuple[str, str], ...] = ()
    # Key states it may change that are reported only when its ApplyOutcome applied them
    # (told before it runs to on_keys_changing, like `keys`).
    touches: tuple[tuple[str, str], ...] = ()


_Item = _WriteItem | _JobItem


class _Stamps:
    """The timestamps of one batch: a block reserved from the clock at once, then, should the
    block run out (a backend that runs its transaction again) or be empty, one from the clock
    per call."""

    __slots__ = ("_block", "_more")

    def __init__(self, block: range, more: Callable[[], int]) -> None:
        self._block = iter(block)
        self._more = more

    def __call__(self) -> int:
        stamp = next(self._block, -1)
        return stamp if stamp >= 0 else self._more()


def _refused(state: str, failure: str) -> Unavailable:
    return Unavailable(
        f"the write path is {'not started' if state == NEW else 'stopped'}; retry on a running node"
    )


def _stopped(failure: str) -> Unavailable:
    return Unavailable("the write path stopped before this write ran; retry")


def _maybe_written(error: BaseException) -> tuple[tuple[str, str], ...]:
    """The keys a failed engine call may have changed all the same."""
    return error.keys if isinstance(error, CommitOutcomeUnknown) else ()


def _reject(items: list[_Item], error: Exception) -> None:
    # A batch the engine failed as a whole, or items left when the writer ended: each gets the error.
    deliveries: list[tuple[LoopWaiter[Any], object]] = []
    for item in items:
        delivery = item.answer(error) if isinstance(item, _WriteItem) else (item.waiter, error)
        if delivery is not None:
            deliveries.append(delivery)
    deliver_all(deliveries)


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
        queue_bytes_max: int = QUEUE_BYTES_MAX_DEFAULT,
        on_batch: Callable[[int], None] | None = None,
        log_tail: LogTail | None = None,
        on_keys_changed: Callable[[list[tuple[str, str]]], None] | None = None,
        on_keys_changing: Callable[[list[tuple[str, str]]], None] | None = None,
        on_keys_settled: Callable[[list[tuple[str, str]]], None] | None = None,
        guard: Callable[[LocalWrite], DomicileError | None] | None = None,
        on_audit: Callable[[list[tuple[int, AuditEntry]], list[AuditEntry]], None] | None = None,
        audit_room: Callable[[], None] | None = None,
        stamp_block: Callable[[int], range] | None = None,
    ) -> None:
        for name, value in (
            ("batch_records_max", batch_records_max),
            ("queue_records_max", queue_records_max),
            ("queue_jobs_max", queue_jobs_max),
            ("queue_bytes_max", queue_bytes_max),
        ):
            if value < 1:
                raise InvalidArgument(f"{name} is {value}; it must be at least 1")
        self.engine = engine
        self._stamp = stamp
        # Reserves a batch's timestamps at once (HybridClock.block) instead of one stamp() per
        # write: the same timestamps the writes would get in a row, for one clock read.
        self._stamp_block = stamp_block
        # Asked on the writer thread, just before a write commits, whether it may still commit:
        # a check made earlier by the caller (the erasure block) can have been overtaken while
        # the write waited (for sealing, the audit entry, the queue). Settable after start,
        # since what it asks may be built after the committer. A refused write's audit entry is
        # not handed on: its caller audits the refusal.
        self.guard = guard
        # Called on the writer thread with the size of every committed batch (metrics).
        self._on_batch = on_batch
        # Gets every committed change-log entry, on the writer thread, in position order.
        self.log_tail = log_tail
        # Gets the (namespace, key) of every durable change, on the writer thread, before the
        # change is acknowledged.
        self.on_keys_changed = on_keys_changed
        # Get, on the writer thread, the keys a commit or job may change before it runs, and the
        # same keys once it has run and on_keys_changed has heard the ones it changed: readers
        # that may see the commit in the engine first (node/cache/coherence.py, `changing`).
        self.on_keys_changing = on_keys_changing
        self.on_keys_settled = on_keys_settled
        # Gets the audit entries of each committed batch (carried, with positions; and those of
        # writes that did not commit), on the writer thread, before anyone hears back.
        self.on_audit = on_audit
        # Called on the writer thread before a batch whose writes carry audit entries commits;
        # blocks while the audit log is behind, and raises to refuse the batch (every write of
        # it is answered with the error, nothing is committed): the audit log's backpressure.
        self.audit_room = audit_room
        self.batch_records_max = batch_records_max
        self.queue_records_max = queue_records_max
        self.queue_jobs_max = queue_jobs_max
        # A count of records does not bound memory when values are large: the value bytes
        # waiting are bounded too. Taken on the event loop, given back on the writer thread.
        self.queue_bytes_max = queue_bytes_max
        self._bytes_lock = threading.Lock()
        self._queued_bytes = 0
        # Writes are batched; a job runs alone, between the writes queued before and after it.
        self._writer: SingleWriter[_Item] = SingleWriter(
            self._handle,
            self._reject,
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
    def queued_bytes(self) -> int:
        return self._queued_bytes

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
        item = _WriteItem(write, waiter)
        self._admit_bytes(item.size)
        try:
            self._writer.put(item)
        except BaseException:
            self._release([item])
            raise
        return await waiter.future

    async def submit_many(self, writes: list[LocalWrite]) -> list[Committed | DomicileError]:
        """Commits the writes durably, queued together so that one commit takes them all (unless
        the queue ahead of them or batch_records_max splits them). A write refused by the
        engine gets its error in its slot; the others still commit. Raises (queuing nothing)
        when they do not fit the queue."""
        if not writes:
            return []
        loop = asyncio.get_running_loop()
        batch = _Batch(LoopWaiter(loop, loop.create_future()), len(writes))
        items = [_WriteItem(w, None, batch, slot) for slot, w in enumerate(writes)]
        self._admit_bytes(sum(item.size for item in items))
        try:
            queued: list[_Item] = list(items)
            self._writer.put_many(queued)
        except BaseException:
            self._release(items)
            raise
        results: list[Committed | DomicileError] = []
        for result in await batch.waiter.future:
            if isinstance(result, (Committed, DomicileError)):
                results.append(result)
            elif isinstance(result, BaseException):
                # Not a refusal of one write (a bug, or the engine failing the batch): the
                # call fails, as it did when each write had a future of its own.
                raise result
            else:
                raise RuntimeError(f"the writer answered a write with {result!r}")
        return results

    def _admit_bytes(self, size: int) -> None:
        with self._bytes_lock:
            # An empty queue takes any write, so that one value at the limit always fits.
            if self._queued_bytes and self._queued_bytes + size > self.queue_bytes_max:
                raise ResourceExhausted(
                    f"write queue is full ({self._queued_bytes} bytes of values waiting; a write of "
                    f"{size} bytes would pass the limit of {self.queue_bytes_max} bytes, "
                    "write_queue_bytes_max); retry after a short back-off"
                )
            self._queued_bytes += size

    def _release(self, items: list[_WriteItem]) -> None:
        with self._bytes_lock:
            for item in items:
                self._queued_bytes -= item.size
                item.size = 0

    async def run(
        self,
        fn: Callable[[StorageEngine], T],
        *,
        keys: Collection[tuple[str, str]] = (),
        touches: Collection[tuple[str, str]] = (),
    ) -> T:
        """Runs fn(engine) on the writer thread, after every write queued before it. `keys`: the
        (namespace, key) states fn may change, told to on_keys_changing before it runs and to
        on_keys_changed once it ran, before its caller hears back (the changes of an
        ApplyOutcome it returns are told without them). `touches`: the keys an ApplyOutcome it
        returns may apply (a replicated batch's), told to on_keys_changing before it runs; only
        those it applied are told changed. Both are told to on_keys_settled at the end."""
        loop = asyncio.get_running_loop()
        waiter: LoopWaiter[T] = LoopWaiter(loop, loop.create_future())
        self._writer.put_solo(_JobItem(fn, waiter, tuple(keys), tuple(touches)))
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
            writes = cast("list[_WriteItem]", batch)
            try:
                self._commit(writes)
            finally:
                self._release(writes)

    def _reject(self, items: list[_Item], error: Exception) -> None:
        self._release([item for item in items if isinstance(item, _WriteItem)])
        _reject(items, error)

    def _run_job(self, job: _JobItem) -> None:
        # A failing job is answered by _reject, like a failed batch of one.
        announced = [*job.keys, *job.touches]
        self._keys_changing(announced)
        try:
            result = job.fn(self.engine)
        except BaseException as error:
            # Whatever it did is unknown: every key it announced may have changed.
            self._keys_changed([*announced, *_maybe_written(error)])
            self._keys_settled(announced)
            raise
        finally:
            self.jobs_run += 1
        changed = list(job.keys)
        if isinstance(result, ApplyOutcome):
            changed.extend((m.namespace, m.key) for m in result.applied)
        self._keys_changed(changed)
        self._keys_settled(announced)
        job.waiter.deliver(result)

    def _commit(self, batch: list[_WriteItem]) -> None:
        if self.audit_room is not None and any(item.write.audit is not None for item in batch):
            self.audit_room()
        guard = self.guard
        refusals = [guard(item.write) if guard is not None else None for item in batch]
        admitted = [item.write for item, refusal in zip(batch, refusals, strict=True) if refusal is None]
        stamp = self._stamp
        if admitted and self._stamp_block is not None:
            stamp = _Stamps(self._stamp_block(len(admitted)), self._stamp)
        keys = [(w.namespace, w.key) for w in admitted]
        self._keys_changing(keys)
        try:
            committed = iter(self.engine.commit_local(admitted, stamp) if admitted else [])
            # Out of the queue before anyone hears back, so a caller that saw its result sees room.
            self._release(batch)
            results: list[Committed | DomicileError] = []
            for refusal in refusals:
                result = refusal if refusal is not None else next(committed, None)
                if result is None:
                    raise RuntimeError(f"engine returned fewer results than the {len(admitted)} writes given")
                results.append(result)
            if next(committed, None) is not None:
                raise RuntimeError(f"engine returned more results than the {len(admitted)} writes given")
            if self.log_tail is not None:
                self._extend_tail(self.log_tail, results)
            self._hand_audit(batch, results, refusals)
            self._keys_changed(
                [(r.mutation.namespace, r.mutation.key) for r in results if isinstance(r, Committed)]
            )
        except BaseException:
            # The batch is rejected as a whole, yet it may have committed (an answer lost with
            # the connection): its keys are told, so no cache keeps serving what they held, and
            # the tail forgets its end, so that senders read the log from the store (else they
            # would take the tail's end for the log's and never ship the entries written).
            self._keys_changed(keys)
            if self.log_tail is not None and admitted:
                self.log_tail.forget()
            raise
        finally:
            self._keys_settled(keys)
        # Counters first, so that a caller who got its result sees them include its batch.
        self.batches_committed += 1
        self.records_committed += sum(isinstance(r, Committed) and not r.replayed for r in results)
        self.last_batch_records = len(batch)
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch))
            except Exception:
                # The writes are committed: a failing metrics hook must not fail their callers
                # (who would retry and write twice).
                log.exception("the group commit batch hook failed")
        deliveries = [item.answer(result) for item, result in zip(batch, results, strict=True)]
        deliver_all([d for d in deliveries if d is not None])

    def _hand_audit(
        self,
        batch: list[_WriteItem],
        results: list[Committed | DomicileError],
        refusals: list[DomicileError | None],
    ) -> None:
        carried: list[tuple[int, AuditEntry]] = []
        direct: list[AuditEntry] = []
        for item, result, refusal in zip(batch, results, refusals, strict=True):
            entry = item.write.audit
            if entry is None or refusal is not None:
                # A write the guard refused: its allow entry would say it was written. Its caller
                # records the refusal in its place (node.service), durable before it answers.
                continue
            if isinstance(result, Committed) and not result.replayed:
                carried.append((result.mutation.lsn, entry))
            else:
                direct.append(entry)
        if self.on_audit is None or not (carried or direct):
            return
        try:
            self.on_audit(carried, direct)
        except Exception:
            # The writes are durable with their entries in the store's outbox; the audit log
            # appends them when it starts again (it refuses new writes until then).
            log.exception("the audit log could not take the entries of a committed batch")

    def _keys_changing(self, keys: list[tuple[str, str]]) -> None:
        _tell(self.on_keys_changing, keys)

    def _keys_settled(self, keys: list[tuple[str, str]]) -> None:
        _tell(self.on_keys_settled, keys)

    def _keys_changed(self, keys: list[tuple[str, str]]) -> None:
        _tell(self.on_keys_changed, keys)

    @staticmethod
    def _extend_tail(tail: LogTail, results: list[Committed | DomicileError]) -> None:
        # After the commit and before any writer hears back, so that a sender woken by a write
        # finds it in the tail. The batch is durable whatever happens here: a failure only
        # empties the tail (senders read the store), it never fails the writes.
        try:
            tail.append([r.mutation for r in results if isinstance(r, Committed) and not r.replayed])
        except Exception:
            log.exception("the change-log tail could not take a committed batch; senders read the store")
            tail.forget()


def _tell(listener: Callable[[list[tuple[str, str]]], None] | None, keys: list[tuple[str, str]]) -> None:
    """Tells a key-change listener, never failing the writes: a change that is durable (or
    about to be) must not fail its callers, who would retry and write twice. The listener keeps
    its own state safe (node/cache/ distrusts itself, or keeps the keys marked)."""
    if listener is None or not keys:
        return
    try:
        listener(keys)
    except Exception:
        log.exception("the key-change listener failed")
