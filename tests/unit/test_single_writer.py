"""SingleWriter on its own: batching, the bounded queue, solo items, failures, stop and drain.

Tests that need items to pile up first park the writer thread inside a solo item that waits on
a threading.Event; batching is then deterministic.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from domicile.errors import InvalidArgument, ResourceExhausted, Unavailable
from domicile.single_writer import (
    CLOSED,
    CLOSING,
    FAILED,
    NEW,
    RUNNING,
    LoopWaiter,
    SingleWriter,
    deliver_all,
)


@dataclass
class Item:
    value: str
    waiter: LoopWaiter[str] | None = None
    # A parked item blocks the writer until released.
    park: threading.Event | None = None
    parked: threading.Event = field(default_factory=threading.Event)


def waiter_here() -> LoopWaiter[str]:
    loop = asyncio.get_running_loop()
    return LoopWaiter(loop, loop.create_future())


class Recorder:
    """A writer whose batches are recorded, answered with the upper-cased values, and made to
    fail on request."""

    def __init__(self, *, batch: int = 4, queue: int = 8, solo: int = 2) -> None:
        self.batches: list[list[str]] = []
        self.observed: list[tuple[int, float]] = []
        self._reported = threading.Condition()
        self.exits = 0
        self.fail_values: set[str] = set()
        self.fatal_values: set[str] = set()
        self.writer: SingleWriter[Item] = SingleWriter(
            self.handle,
            self.reject,
            name="test-writer",
            batch_max=batch,
            queue_max=queue,
            full_message=f"queue is full ({queue} items waiting)",
            solo_max=solo,
            solo_full_message=f"solo queue is full ({solo} items waiting)",
            refused=lambda state, failure: Unavailable(f"writer is {state} ({failure})"),
            stopped=lambda failure: Unavailable(f"writer stopped before this item ({failure or 'closed'})"),
            on_batch=self.observe,
            on_exit=self.exit,
        )

    def observe(self, size: int, seconds: float) -> None:
        with self._reported:
            self.observed.append((size, seconds))
            self._reported.notify_all()

    async def observed_batches(self, count: int, timeout_s: float = 10.0) -> None:
        """Waits until the writer thread has reported `count` batches."""

        def wait() -> bool:
            with self._reported:
                return self._reported.wait_for(lambda: len(self.observed) >= count, timeout_s)

        assert await asyncio.to_thread(wait), f"{len(self.observed)} of {count} batches reported"

    def handle(self, batch: list[Item]) -> None:
        self.batches.append([item.value for item in batch])
        for item in batch:
            if item.park is not None:
                item.parked.set()
                item.park.wait()
        if any(item.value in self.fatal_values for item in batch):
            self.writer.fail("the disk is gone")
            raise OSError("the disk is gone")
        if any(item.value in self.fail_values for item in batch):
            raise OSError("disk full")
        for item in batch:
            if item.waiter is not None:
                item.waiter.deliver(item.value.upper())

    def reject(self, items: list[Item], error: Exception) -> None:
        for item in items:
            if item.waiter is not None:
                item.waiter.deliver(error)

    def exit(self) -> None:
        self.exits += 1

    async def put(self, value: str) -> asyncio.Future[str]:
        waiter: LoopWaiter[str] = waiter_here()
        self.writer.put(Item(value, waiter))
        return waiter.future

    async def park(self) -> threading.Event:
        """Parks the writer thread inside a solo item; returns the event that releases it."""
        release = threading.Event()
        item = Item("park", park=release)
        self.writer.put_solo(item)
        await asyncio.to_thread(item.parked.wait)
        return release


@pytest.fixture
def started() -> Iterator[Callable[..., Recorder]]:
    recorders: list[Recorder] = []

    def start(**limits: int) -> Recorder:
        r = Recorder(**limits)
        r.writer.start()
        recorders.append(r)
        return r

    yield start
    for r in recorders:
        r.writer.stop(timeout=5)


@pytest.fixture
def recorder(started: Callable[..., Recorder]) -> Recorder:
    return started()


async def test_waiting_items_are_handled_in_batches_in_queue_order(recorder: Recorder) -> None:
    release = await recorder.park()
    futures = [await recorder.put(f"v{i}") for i in range(8)]
    assert recorder.writer.queued == 8
    release.set()
    assert await asyncio.gather(*futures) == [f"V{i}" for i in range(8)]
    assert recorder.batches == [["park"], ["v0", "v1", "v2", "v3"], ["v4", "v5", "v6", "v7"]]
    # The writer reports a batch after handling it, so the answers can arrive first.
    await recorder.observed_batches(3)
    assert [size for size, _ in recorder.observed] == [1, 4, 4]
    assert all(seconds >= 0 for _, seconds in recorder.observed)
    assert recorder.writer.queued == 0


async def test_a_solo_item_is_handled_alone_between_the_items_around_it(recorder: Recorder) -> None:
    release = await recorder.park()
    before = [await recorder.put(f"a{i}") for i in range(2)]
    solo_waiter: LoopWaiter[str] = waiter_here()
    recorder.writer.put_solo(Item("solo", solo_waiter))
    after = [await recorder.put(f"b{i}") for i in range(2)]
    assert (recorder.writer.queued, recorder.writer.queued_solo) == (4, 1)
    release.set()
    await asyncio.gather(*before, solo_waiter.future, *after)
    assert recorder.batches == [["park"], ["a0", "a1"], ["solo"], ["b0", "b1"]]


async def test_a_full_queue_refuses_at_once_and_queues_nothing(recorder: Recorder) -> None:
    release = await recorder.park()
    futures = [await recorder.put(f"v{i}") for i in range(8)]
    with pytest.raises(ResourceExhausted, match=r"queue is full \(8 items waiting\)"):
        await recorder.put("one-too-many")
    recorder.writer.put_solo(Item("solo-1"))
    recorder.writer.put_solo(Item("solo-2"))
    with pytest.raises(ResourceExhausted, match=r"solo queue is full \(2 items waiting\)"):
        recorder.writer.put_solo(Item("solo-3"))
    release.set()
    await asyncio.gather(*futures)
    assert "one-too-many" not in [v for batch in recorder.batches for v in batch]
    # Room again once drained.
    assert await (await recorder.put("later")) == "LATER"


async def test_a_failing_batch_fails_each_of_its_items_and_the_writer_goes_on(recorder: Recorder) -> None:
    recorder.fail_values.add("v1")
    release = await recorder.park()
    futures = [await recorder.put(f"v{i}") for i in range(3)]
    release.set()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [str(r) for r in results] == ["disk full"] * 3
    assert all(isinstance(r, OSError) for r in results)
    assert [size for size, _ in recorder.observed] == [1]  # only the parking item succeeded
    assert await (await recorder.put("next")) == "NEXT"
    assert recorder.writer.state == RUNNING


async def test_fail_stops_the_writer_and_rejects_what_is_queued(started: Callable[..., Recorder]) -> None:
    # A batch of one keeps v0 apart from what is queued after it.
    recorder = started(batch=1)
    recorder.fatal_values.add("v0")
    release = await recorder.park()
    first = await recorder.put("v0")
    queued = [await recorder.put(f"v{i}") for i in range(1, 3)]
    release.set()
    with pytest.raises(OSError, match="the disk is gone"):
        await first
    for future in queued:
        with pytest.raises(Unavailable, match=r"stopped before this item \(the disk is gone\)"):
            await future
    assert recorder.writer.state == FAILED
    assert recorder.writer.failure == "the disk is gone"
    with pytest.raises(Unavailable, match=r"writer is failed \(the disk is gone\)"):
        await recorder.put("refused")
    assert await asyncio.to_thread(recorder.writer.stop, 5)
    assert recorder.writer.state == CLOSED
    assert recorder.exits == 1


async def test_stop_drains_what_was_accepted_and_refuses_more(recorder: Recorder) -> None:
    release = await recorder.park()
    futures = [await recorder.put(f"v{i}") for i in range(6)]
    recorder.writer.stop_accepting()
    assert recorder.writer.state == CLOSING
    with pytest.raises(Unavailable, match="writer is closing"):
        await recorder.put("after-stop")
    release.set()
    assert await asyncio.to_thread(recorder.writer.stop) is True
    assert await asyncio.gather(*futures) == [f"V{i}" for i in range(6)]
    assert recorder.writer.state == CLOSED
    assert recorder.exits == 1
    assert recorder.writer.stop() is True  # stopping again is harmless


async def test_a_stop_that_times_out_leaves_the_rest_to_reject_queued(recorder: Recorder) -> None:
    release = await recorder.park()
    futures = [await recorder.put(f"v{i}") for i in range(3)]
    assert await asyncio.to_thread(recorder.writer.stop, 0.05) is False
    recorder.writer.reject_queued(Unavailable("closed before this item was written"))
    for future in futures:
        with pytest.raises(Unavailable, match="closed before"):
            await future
    release.set()
    assert await asyncio.to_thread(recorder.writer.stop, 5) is True
    assert recorder.batches == [["park"]]


async def test_items_from_several_threads_and_loops_reach_their_own_callers(
    started: Callable[..., Recorder],
) -> None:
    recorder = started(queue=1000)

    async def put_many(t: int) -> list[str]:
        return list(await asyncio.gather(*[await recorder.put(f"t{t}-{i}") for i in range(25)]))

    results = await asyncio.gather(
        *(asyncio.to_thread(asyncio.run, put_many(t)) for t in range(3)), put_many(99)
    )
    for t, values in zip([0, 1, 2, 99], results, strict=True):
        assert values == [f"T{t}-{i}" for i in range(25)]


async def test_a_cancelled_caller_does_not_disturb_the_others(recorder: Recorder) -> None:
    release = await recorder.park()
    cancelled = await recorder.put("cancelled")
    kept = await recorder.put("kept")
    cancelled.cancel()
    release.set()
    assert await kept == "KEPT"
    assert ["cancelled", "kept"] in recorder.batches


async def test_put_before_start_and_start_twice_are_refused() -> None:
    recorder = Recorder()
    assert recorder.writer.state == NEW
    with pytest.raises(Unavailable, match="writer is new"):
        await recorder.put("early")
    recorder.writer.start()
    with pytest.raises(RuntimeError, match="running"):
        recorder.writer.start()
    assert recorder.writer.stop(timeout=5)
    never_started = Recorder()
    assert never_started.writer.stop() is True
    assert never_started.writer.state == CLOSED
    assert never_started.exits == 0


@pytest.mark.parametrize(("batch", "queue", "solo"), [(0, 1, 0), (1, 0, 0), (1, 1, -1)])
def test_bad_limits_are_refused(batch: int, queue: int, solo: int) -> None:
    with pytest.raises(InvalidArgument, match="it must be at least"):
        Recorder(batch=batch, queue=queue, solo=solo)


# The writer thread re-raises what ended it; pytest reports that as a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_regression_a_batch_the_writer_dies_in_is_answered(started: Callable[..., Recorder]) -> None:
    """A BaseException (SystemExit, KeyboardInterrupt) in the handler ended the writer without
    answering the batch it was handling: its callers waited for ever."""
    recorder = started()
    original = recorder.handle

    def dying(batch: list[Item]) -> None:
        if any(item.value == "exit" for item in batch):
            raise SystemExit("stop")
        original(batch)

    recorder.writer._handle = dying  # type: ignore[attr-defined]
    future = await recorder.put("exit")
    with pytest.raises(Unavailable, match="writer stopped"):
        await asyncio.wait_for(future, 5)
    assert recorder.writer.state == FAILED


async def test_regression_a_failing_batch_hook_neither_fails_the_batch_nor_stops_the_writer(
    started: Callable[..., Recorder],
) -> None:
    recorder = started()

    def broken_hook(size: int, seconds: float) -> None:
        raise ValueError("metrics backend gone")

    recorder.writer._on_batch = broken_hook  # type: ignore[attr-defined]
    assert await asyncio.wait_for(await recorder.put("a"), 5) == "A"
    assert await asyncio.wait_for(await recorder.put("b"), 5) == "B"
    assert recorder.writer.state == RUNNING


async def test_deliver_all_settles_each_callers_future_from_another_thread() -> None:
    # The group committer hands a batch's results at once: each future gets its own result or
    # error, a cancelled one is skipped, and callers on another loop get theirs on that loop.
    here = [waiter_here() for _ in range(3)]
    here[1].future.cancel()
    other_loop = asyncio.new_event_loop()
    other_waiter: LoopWaiter[str] = LoopWaiter(other_loop, other_loop.create_future())
    error = Unavailable("refused")
    thread = threading.Thread(
        target=deliver_all,
        args=([(here[0], "a"), (here[1], "b"), (here[2], error), (other_waiter, "d")],),
    )
    thread.start()
    thread.join()
    assert await here[0].future == "a"
    with pytest.raises(Unavailable):
        await here[2].future
    assert here[1].future.cancelled()
    assert not other_waiter.future.done()  # settled by its own loop, not this one
    runner = threading.Thread(target=other_loop.run_until_complete, args=(other_waiter.future,))
    runner.start()
    runner.join()
    assert other_waiter.future.result() == "d"
    other_loop.close()
