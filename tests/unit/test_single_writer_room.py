"""SingleWriter.wait_room: a producer of unbounded puts waits until the writer has taken enough
of the queue, for at most its timeout; nobody waits on a writer that takes no more puts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.unit.test_single_writer import Item, Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder(batch=4, queue=8, solo=2)
    r.writer.start()
    yield r
    r.writer.stop(timeout=5)


def fill(recorder: Recorder, count: int) -> None:
    recorder.writer.put_many([Item(f"v{i}") for i in range(count)], bounded=False)


async def test_room_under_the_mark_is_granted_at_once(recorder: Recorder) -> None:
    release = await recorder.park()
    fill(recorder, 3)
    assert recorder.writer.wait_room(4, timeout_s=0.0)
    release.set()


async def test_a_producer_waits_until_the_writer_takes_the_queue_below_the_mark(recorder: Recorder) -> None:
    release = await recorder.park()
    fill(recorder, 20)  # unbounded: past queue_max
    assert recorder.writer.queued == 20
    waited: list[bool] = []
    producer = threading.Thread(target=lambda: waited.append(recorder.writer.wait_room(10, timeout_s=30)))
    producer.start()
    await asyncio.sleep(0.2)
    assert producer.is_alive(), "the producer went on while the queue was at the mark"
    release.set()
    await asyncio.to_thread(producer.join, 30)
    assert waited == [True]
    assert recorder.writer.queued < 10


async def test_a_writer_that_takes_nothing_leaves_the_producer_to_its_timeout(recorder: Recorder) -> None:
    release = await recorder.park()
    fill(recorder, 12)
    started = time.monotonic()
    assert recorder.writer.wait_room(10, timeout_s=0.3) is False
    assert time.monotonic() - started >= 0.3
    assert recorder.writer.queued == 12  # the wait took nothing
    release.set()


@pytest.mark.parametrize("ending", ["stop_accepting", "fail"])
async def test_a_writer_that_stops_taking_puts_wakes_its_producers(recorder: Recorder, ending: str) -> None:
    release = await recorder.park()
    fill(recorder, 12)
    waited: list[bool] = []
    producer = threading.Thread(target=lambda: waited.append(recorder.writer.wait_room(10, timeout_s=30)))
    producer.start()
    await asyncio.sleep(0.1)
    end: Callable[[], None] = (
        recorder.writer.stop_accepting if ending == "stop_accepting" else lambda: recorder.writer.fail("gone")
    )
    end()
    await asyncio.to_thread(producer.join, 5)
    assert not producer.is_alive() and waited == [True]  # nothing more can queue: no reason to wait
    release.set()
