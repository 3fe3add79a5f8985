"""SingleWriter's linger: items nobody waits on are held for the items of the next linger_s
seconds, so that they share one batch; anything someone waits on ends the wait at once.

The writer is seen lingering (its private flag) before the items that should join its batch are
queued, so that what lands in one batch does not depend on how fast the threads run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from domicile.errors import InvalidArgument, Unavailable
from domicile.single_writer import LINGER_MAX_S, SingleWriter

WAIT_S = 20.0


class Batches:
    """A writer with a linger whose batches are recorded as they are handled."""

    def __init__(self, linger_s: float, batch: int = 8) -> None:
        self.batches: list[list[str]] = []
        self.handled_at: list[float] = []
        self.rejected: list[tuple[list[str], Exception]] = []
        self._changed = threading.Condition()
        self.writer: SingleWriter[str] = SingleWriter(
            self.handle,
            self.reject,
            name="test-linger",
            batch_max=batch,
            queue_max=64,
            full_message="queue is full",
            solo_max=4,
            solo_full_message="solo queue is full",
            refused=lambda state, failure: Unavailable(f"writer is {state}"),
            stopped=lambda failure: Unavailable("writer stopped"),
            linger_s=linger_s,
        )

    def handle(self, batch: list[str]) -> None:
        with self._changed:
            self.batches.append(list(batch))
            self.handled_at.append(time.monotonic())
            self._changed.notify_all()

    def reject(self, items: list[str], error: Exception) -> None:
        with self._changed:
            self.rejected.append((list(items), error))
            self._changed.notify_all()

    def until(self, condition: Callable[[], bool], what: str) -> None:
        with self._changed:
            assert self._changed.wait_for(condition, WAIT_S), f"not within {WAIT_S} s: {what}"

    def until_lingering(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while not self.writer._lingering:
            assert time.monotonic() < deadline, "the writer never lingered"
            time.sleep(0.001)


@pytest.fixture
def started() -> Iterator[Callable[..., Batches]]:
    made: list[Batches] = []

    def make(linger_s: float = LINGER_MAX_S, batch: int = 8) -> Batches:
        it = Batches(linger_s, batch)
        it.writer.start()
        made.append(it)
        return it

    yield make
    for it in made:
        it.writer.stop(WAIT_S)


def test_items_nobody_waits_on_wait_for_more_and_share_one_batch(started: Callable[..., Batches]) -> None:
    it = started()
    it.writer.put("a", urgent=False)
    it.until_lingering()
    it.writer.put("b", urgent=False)
    it.writer.put_many(["c", "d"], urgent=False)
    assert it.batches == [], "a lingering writer handed its items over before the linger ended"
    it.writer.hurry()
    it.until(lambda: bool(it.batches), "the batch after hurry()")
    assert it.batches == [["a", "b", "c", "d"]]


def test_negative_control_without_a_linger_each_item_is_handed_over_at_once(
    started: Callable[..., Batches],
) -> None:
    it = started(linger_s=0.0)
    for value in ("a", "b", "c"):
        it.writer.put(value, urgent=False)
        it.until(lambda alone=[value]: alone in it.batches, f"{value} handed over on its own")
    assert it.batches == [["a"], ["b"], ["c"]]


def test_an_item_left_alone_is_handed_over_once_the_linger_ends(started: Callable[..., Batches]) -> None:
    it = started(linger_s=0.05)
    it.writer.put("a", urgent=False)
    it.until(lambda: bool(it.batches), "the lone item handed over")
    assert it.batches == [["a"]]


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(lambda w: w.put("urgent"), id="an-urgent-item"),
        pytest.param(lambda w: w.put_many(["x", "y", "z"], urgent=False), id="a-full-batch"),
        pytest.param(lambda w: w.hurry(), id="hurry"),
    ],
)
def test_the_linger_ends_at_once_when_someone_waits_or_the_batch_is_full(
    started: Callable[..., Batches], end: Callable[[SingleWriter[str]], None]
) -> None:
    it = started(batch=4)
    since = time.monotonic()
    it.writer.put("a", urgent=False)
    it.until_lingering()
    end(it.writer)
    it.until(lambda: bool(it.batches), "the batch handed over")
    assert it.batches[0][0] == "a"
    # Well before the linger would have ended by itself.
    assert it.handled_at[0] - since < LINGER_MAX_S


def test_a_solo_item_ends_the_linger_and_runs_after_the_items_before_it(
    started: Callable[..., Batches],
) -> None:
    it = started()
    it.writer.put("a", urgent=False)
    it.until_lingering()
    it.writer.put_solo("job")
    it.until(lambda: len(it.batches) == 2, "the items and the job")
    assert it.batches == [["a"], ["job"]]


def test_stop_hands_the_lingering_items_over_before_the_writer_ends(started: Callable[..., Batches]) -> None:
    it = started()
    it.writer.put_many(["a", "b"], urgent=False)
    it.until_lingering()
    assert it.writer.stop(WAIT_S)
    assert it.batches == [["a", "b"]]
    assert it.rejected == []


def test_regression_items_rejected_while_lingering_leave_no_empty_batch(
    started: Callable[..., Batches],
) -> None:
    # reject_queued can empty the queue while the writer lingers: it must go back to waiting
    # for items, not hand `handle` an empty batch.
    it = started(linger_s=0.1)
    it.writer.put("a", urgent=False)
    it.until_lingering()
    it.writer.reject_queued(Unavailable("gone"))
    deadline = time.monotonic() + WAIT_S
    while it.writer._lingering:  # the linger ends by itself, over an empty queue
        assert time.monotonic() < deadline, "the linger never ended"
        time.sleep(0.001)
    it.writer.put("b")
    it.until(lambda: bool(it.batches), "the next item handed over")
    assert it.batches == [["b"]]
    assert [items for items, _ in it.rejected] == [["a"]]


@pytest.mark.parametrize("linger_s", [-0.1, LINGER_MAX_S + 0.5])
def test_a_linger_out_of_bounds_is_refused(linger_s: float) -> None:
    with pytest.raises(InvalidArgument, match="linger_s"):
        Batches(linger_s)
