"""The one retry helper: delays, caps, and which errors end a retry."""

from __future__ import annotations

import asyncio
import random

import pytest

from domicile.retry import Backoff, BackoffPolicy, grpc_reconnect_options, retry, retry_forever


def test_delays_double_to_the_cap_with_jitter():
    delays = BackoffPolicy(0.05, 5.0).delays(random.Random(7))
    got = [next(delays) for _ in range(12)]
    bases = [min(0.05 * 2**i, 5.0) for i in range(12)]
    for delay, base in zip(got, bases, strict=True):
        assert base * 0.5 <= delay < base * 1.5


def test_a_capped_backoff_never_waits_longer_than_its_cap_and_reset_starts_over():
    backoff = Backoff(BackoffPolicy(0.05, 5.0), random.Random(1), cap_s=2.0)
    assert all(backoff.next_delay() <= 2.0 for _ in range(20))
    backoff.reset()
    assert backoff.next_delay() < 0.075


def test_regression_grpc_redials_on_the_policys_delays_not_its_own():
    # A replication link keeps its channel across reconnects; under gRPC's default back-off
    # (1 s growing to 120 s) a target back from a partition of a few seconds was dialled again
    # only seconds later, and a synchronous write retried meanwhile found one region.
    options = dict(grpc_reconnect_options(BackoffPolicy(0.02, 0.3)))
    assert options == {"grpc.initial_reconnect_backoff_ms": 20, "grpc.max_reconnect_backoff_ms": 300}
    assert dict(grpc_reconnect_options(BackoffPolicy(0.0001, 5.0)))["grpc.initial_reconnect_backoff_ms"] == 1


async def test_retry_returns_the_first_success_and_raises_what_is_not_retriable():
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("away")
        return "ok"

    backoff = Backoff(BackoffPolicy(0.001, 0.002), random.Random(1))
    assert await retry(flaky, backoff, retriable=lambda e: isinstance(e, ConnectionError)) == "ok"
    assert len(calls) == 3

    async def refused() -> None:
        raise ValueError("bad request")

    with pytest.raises(ValueError):
        await retry(refused, backoff, retriable=lambda e: isinstance(e, ConnectionError))


async def test_retry_forever_runs_the_session_again_until_cancelled():
    errors: list[Exception] = []
    waits = []
    third = asyncio.Event()

    async def session() -> None:
        if len(errors) >= 3:
            third.set()
        raise ConnectionError("dropped")

    task = asyncio.create_task(
        retry_forever(
            session,
            Backoff(BackoffPolicy(0.001, 0.002), random.Random(1)),
            on_error=errors.append,
            before_wait=lambda: waits.append(1),
        )
    )
    await asyncio.wait_for(third.wait(), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(isinstance(e, ConnectionError) for e in errors) and len(waits) >= 3
