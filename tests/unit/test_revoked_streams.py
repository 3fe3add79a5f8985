"""The guard of open streams (logic above gRPC, with a fake gate and call context): a stream stops
passing messages either way once its caller's certificate is revoked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from domicile.authz.gate import Reason, Refusal, Validity
from domicile.authz.revoked_streams import RevokedStreamsGuard

SERIAL = 0xABC


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


class FakeGate:
    enforcing = True

    def __init__(self) -> None:
        self.revoked_now: frozenset[int] = frozenset()
        self.refusals: list[Refusal] = []
        self.valid = Validity(0.0, 4_000_000_000.0)

    def certificate_serial(self, context: Any) -> tuple[int, str, Validity]:
        return SERIAL, "spiffe://domicile/region/eu-west-1/node/ghost", self.valid

    def revoked(self) -> frozenset[int]:
        return self.revoked_now

    def on_refusal(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)


async def test_a_bidirectional_stream_stops_taking_and_giving_once_revoked() -> None:
    gate = FakeGate()
    seen: list[int] = []

    async def handler(requests: AsyncIterator[int], context: Any) -> AsyncIterator[int]:
        async for request in requests:
            seen.append(request)
            if request == 2:
                gate.revoked_now = frozenset({SERIAL})  # revoked while the stream is open
            yield request * 10

    async def requests() -> AsyncIterator[int]:
        for i in range(1, 6):
            yield i

    method = grpc.stream_stream_rpc_method_handler(handler)
    wrapped = RevokedStreamsGuard(gate).wrap("/domicile.v1.ReplicationService/Replicate", method)  # type: ignore[arg-type]
    context = FakeContext()
    answered: list[int] = []
    with pytest.raises(Aborted):
        async for response in wrapped.stream_stream(requests(), context):
            answered.append(response)
    # The reply to the message that came before the revocation took effect is not sent, and no
    # later message reaches the handler.
    assert seen == [1, 2] and answered == [10]
    assert context.code == grpc.StatusCode.UNAUTHENTICATED
    assert "serial 0xabc" in context.details and "while this stream was open" in context.details
    assert [(r.action, r.reason) for r in gate.refusals] == [
        ("domicile.v1.ReplicationService.Replicate", Reason.REVOKED)
    ]


async def test_a_server_stream_ends_before_its_next_message() -> None:
    gate = FakeGate()

    async def handler(request: int, context: Any) -> AsyncIterator[int]:
        yield 1
        gate.revoked_now = frozenset({SERIAL})
        yield 2

    method = grpc.unary_stream_rpc_method_handler(handler)
    wrapped = RevokedStreamsGuard(gate).wrap("/domicile.v1.CoordinatorService/WatchTopology", method)  # type: ignore[arg-type]
    answered: list[int] = []
    with pytest.raises(Aborted):
        async for response in wrapped.unary_stream(0, FakeContext()):
            answered.append(response)
    assert answered == [1]


async def test_a_stream_ends_once_its_certificate_expires() -> None:
    """Regression: a certificate was checked for its validity in the handshake only."""
    gate = FakeGate()
    gate.valid = Validity(0.0, time.time() + 0.05)

    async def handler(request: int, context: Any) -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(0.1)  # its validity ends while the stream is open
        yield 2

    method = grpc.unary_stream_rpc_method_handler(handler)
    wrapped = RevokedStreamsGuard(gate).wrap("/domicile.v1.CoordinatorService/WatchTopology", method)  # type: ignore[arg-type]
    context = FakeContext()
    answered: list[int] = []
    with pytest.raises(Aborted):
        async for response in wrapped.unary_stream(0, context):
            answered.append(response)
    assert answered == [1]
    assert context.code == grpc.StatusCode.UNAUTHENTICATED and "expired at" in context.details
    assert [r.reason for r in gate.refusals] == [Reason.UNAUTHENTICATED]


async def test_a_stream_of_another_certificate_goes_on() -> None:
    """Negative control: revocations of other serials change nothing."""
    gate = FakeGate()
    gate.revoked_now = frozenset({SERIAL + 1})

    async def handler(request: int, context: Any) -> AsyncIterator[int]:
        for i in range(3):
            yield i

    method = grpc.unary_stream_rpc_method_handler(handler)
    wrapped = RevokedStreamsGuard(gate).wrap("/domicile.v1.CoordinatorService/WatchTopology", method)  # type: ignore[arg-type]
    assert [r async for r in wrapped.unary_stream(0, FakeContext())] == [0, 1, 2]
    assert gate.refusals == []


async def test_a_handler_that_writes_its_answers_is_checked_at_each_write() -> None:
    """grpc's health Watch answers with context.write(), not by yielding."""
    gate = FakeGate()
    written: list[int] = []

    class WritingContext(FakeContext):
        async def write(self, message: int) -> None:
            written.append(message)

    async def handler(request: int, context: Any) -> None:
        await context.write(1)
        gate.revoked_now = frozenset({SERIAL})
        await context.write(2)

    method = grpc.unary_stream_rpc_method_handler(handler)
    wrapped = RevokedStreamsGuard(gate).wrap("/grpc.health.v1.Health/Watch", method)  # type: ignore[arg-type]
    context = WritingContext()
    with pytest.raises(Aborted):
        await wrapped.unary_stream(0, context)
    assert written == [1]
    assert context.code == grpc.StatusCode.UNAUTHENTICATED
