"""A batch write's deadline on a replication stream (node/replication/outbound.py): a write that
completes after its timer cancelled the call ends the session as a timeout, and an ack reader
cancelled with its call ends it as an error, never as a CancelledError that would end the
link's sender task for good. The call is a stand-in: the logic above gRPC is what is tested."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest

from domicile.v1 import replication_pb2 as rpb
from node.replication.outbound import _reader_result, _write_within


class SlowCall:
    """A call whose write finishes `write_s` later whatever happens to the call meanwhile (the
    timer and the write's completion in one turn of the loop, stretched)."""

    def __init__(self, write_s: float) -> None:
        self.write_s = write_s
        self.cancelled = False

    async def write(self, request: Any) -> None:
        await asyncio.sleep(self.write_s)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def as_call(call: SlowCall) -> grpc.aio.StreamStreamCall:
    return cast(grpc.aio.StreamStreamCall, call)


async def test_regression_a_write_that_completes_after_its_deadline_is_a_timeout() -> None:
    call = SlowCall(write_s=0.05)
    with pytest.raises(TimeoutError, match=r"no answer from the peer within 0\.01 s"):
        await _write_within(as_call(call), rpb.ReplicateRequest(), 0.01)
    assert call.cancelled


async def test_a_write_within_its_deadline_goes_on() -> None:
    call = SlowCall(write_s=0.0)
    await _write_within(as_call(call), rpb.ReplicateRequest(), 5.0)
    assert not call.cancelled


async def test_regression_a_reader_cancelled_with_its_call_is_a_connection_error() -> None:
    async def read_cancelled_call() -> None:
        raise asyncio.CancelledError  # what grpc.aio's read raises on a locally cancelled call

    reader = asyncio.create_task(read_cancelled_call())
    await asyncio.wait({reader})
    assert reader.cancelled()
    with pytest.raises(ConnectionError, match="cancelled"):
        _reader_result(reader)


async def test_a_reader_that_failed_raises_its_error() -> None:
    async def read_failed() -> None:
        raise ValueError("bad ack")

    reader = asyncio.create_task(read_failed())
    await asyncio.wait({reader})
    with pytest.raises(ValueError, match="bad ack"):
        _reader_result(reader)
