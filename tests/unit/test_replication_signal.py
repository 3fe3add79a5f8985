"""The senders' wake-up and their batch write's deadline, without tasks of their own."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from domicile.causality import CausalContext, Dot, Mutation, Version
from domicile.v1 import replication_pb2 as rpb
from node.engine.log_tail import LogTail
from node.replication.outbound import _write_within
from node.replication.signal import LogSignal


def _commit(tail: LogTail, *namespaces: str, first: int | None = None) -> None:
    """Appends one entry per namespace to the tail, as the group committer does after a commit."""
    first = first if first is not None else (tail.last_lsn or 0) + 1
    tail.append(
        [
            Mutation(ns, f"k{first + i}", CausalContext(), Version(Dot("n", first + i), b"v", 1), first + i)
            for i, ns in enumerate(namespaces)
        ]
    )


def _tail() -> LogTail:
    return LogTail(records_max=100, bytes_max=1 << 20, after_lsn=0)


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


async def test_a_commit_wakes_only_the_waiters_of_its_namespaces() -> None:
    tail = _tail()
    signal = LogSignal(tail)
    signal.notify()  # before anyone waits: only moves on
    pair = signal.mark_for("pair-link", ["pair"], past=1000)
    other = signal.mark_for("other-link", ["global", "far"], past=1000)
    _commit(tail, "pair", "local")
    signal.notify()
    assert any(f.done() for f in pair)
    assert not any(f.done() for f in other)
    # A notify of the same commit again (its other writers answered) wakes nobody more.
    signal.notify()
    assert not any(f.done() for f in other)
    _commit(tail, "far")
    signal.notify()
    assert any(f.done() for f in other)


async def test_a_waiter_of_other_namespaces_is_woken_once_the_log_passes_its_position() -> None:
    tail = _tail()
    signal = LogSignal(tail)
    signal.notify()
    idle = signal.mark_for("idle-link", ["far"], past=3)
    for _ in range(2):
        _commit(tail, "pair")
        signal.notify()
        assert not any(f.done() for f in idle)
    _commit(tail, "pair")  # position 3
    signal.notify()
    assert any(f.done() for f in idle)
    # A later mark replaces the waiter's position; one forgotten is never resolved.
    later = signal.mark_for("idle-link", ["far"], past=4)
    signal.forget("idle-link")
    _commit(tail, "pair")
    signal.notify()
    assert not any(f.done() for f in later)


async def test_every_waiter_is_woken_when_the_signal_cannot_tell_what_was_written() -> None:
    # Without a tail.
    blind = LogSignal()
    marks = blind.mark_for("a", ["x"], past=10**9)
    blind.notify()
    assert all(f.done() for f in marks)
    # With a tail that no longer holds the entries since the last notify (it forgot them).
    tail = _tail()
    signal = LogSignal(tail)
    signal.notify()
    marks = signal.mark_for("a", ["x"], past=10**9)
    _commit(tail, "y")
    tail.forget()
    _commit(tail, "y", first=2)  # the tail holds position 2 on, not 1
    signal.notify()
    assert all(f.done() for f in marks)
    # The control: with the tail holding them, the same commit wakes nobody.
    marks = signal.mark_for("a", ["x"], past=10**9)
    _commit(tail, "y")
    signal.notify()
    assert not any(f.done() for f in marks)


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
