"""The senders' wake-up and their batch write's deadline, without tasks of their own."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from domicile.v1 import replication_pb2 as rpb
from node.replication.outbound import _write_within
from node.replication.signal import LogSignal


async def test_a_mark_taken_before_a_notify_is_resolved_by_it_and_the_next_mark_is_new() -> None:
    signal = LogSignal()
    signal.notify()  # nobody waits: nothing to do
    mark = signal.mark()
    assert signal.mark() is mark  # every waiter of this burst shares it
    signal.notify()
    assert mark.done()
    later = signal.mark()
    assert later is not mark and not later.done()
    await signal.wait(0.01, later)  # times out without a notify
    assert not later.done()
    waiter = asyncio.ensure_future(signal.wait(5.0))
    await asyncio.sleep(0)
    signal.notify()
    await asyncio.wait_for(waiter, 1.0)


class _StuckCall:
    """A call whose write never completes until the call is cancelled."""

    def __init__(self) -> None:
        self.cancelled = 0
        self._pending: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def cancel(self) -> bool:
        self.cancelled += 1
        if not self._pending.done():
            self._pending.set_exception(ConnectionError("call cancelled"))
        return True

    async def write(self, request: Any) -> None:
        await self._pending


async def test_a_batch_write_past_its_deadline_cancels_the_call_and_times_out() -> None:
    call = _StuckCall()
    with pytest.raises(TimeoutError):
        await _write_within(cast(grpc.aio.StreamStreamCall, call), rpb.ReplicateRequest(), 0.05)
    assert call.cancelled == 1


async def test_a_cut_session_cancels_its_pending_write_and_the_call() -> None:
    call = _StuckCall()
    task = asyncio.ensure_future(
        _write_within(cast(grpc.aio.StreamStreamCall, call), rpb.ReplicateRequest(), 60)
    )
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cancelled == 1
