"""Retrying outbound calls with exponential back-off and jitter.

Every process that calls out (node to node, node to coordinator, later the SDK) retries the same
way, so the delays live in one place: they start at `initial_s`, double up to `max_s`, and each
is jittered so that many callers that failed together do not come back in step.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BackoffPolicy:
    initial_s: float = 0.05
    max_s: float = 5.0

    def delays(self, rng: random.Random) -> Iterator[float]:
        delay = self.initial_s
        while True:
            # Full jitter in [delay/2, delay * 1.5) keeps many senders from reconnecting in step.
            yield delay * rng.uniform(0.5, 1.5)
            delay = min(delay * 2, self.max_s)


def grpc_reconnect_options(policy: BackoffPolicy) -> list[tuple[str, int]]:
    """Channel options under which gRPC redials a lost connection on the policy's delays. A
    channel kept across reconnects dials by its own back-off otherwise (1 s, growing 1.6 times
    to 120 s): a peer that was away for a few seconds is then dialled again only seconds after
    it is back, however short the caller's own delays between attempts."""
    return [
        ("grpc.initial_reconnect_backoff_ms", max(1, round(policy.initial_s * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, round(policy.max_s * 1000))),
    ]


class Backoff:
    """The delays of one retry loop: wait() sleeps the next one, reset() starts over."""

    def __init__(self, policy: BackoffPolicy, rng: random.Random, *, cap_s: float | None = None) -> None:
        self.policy = policy
        self.rng = rng
        # Some loops wait at most cap_s whatever the policy says (the control plane comes back
        # within seconds, and waiting longer only delays noticing it).
        self.cap_s = cap_s
        self._delays = policy.delays(rng)

    def reset(self) -> None:
        self._delays = self.policy.delays(self.rng)

    def next_delay(self) -> float:
        delay = next(self._delays)
        return delay if self.cap_s is None else min(delay, self.cap_s)

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())


async def retry(
    attempt: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    retriable: Callable[[Exception], bool],
) -> T:
    """The result of the first attempt that succeeds. An error `retriable` refuses is raised."""
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not retriable(exc):
                raise
        await backoff.wait()


async def retry_forever(
    attempt: Callable[[], Awaitable[object]],
    backoff: Backoff,
    *,
    on_error: Callable[[Exception], None],
    before_wait: Callable[[], None] = lambda: None,
) -> NoReturn:
    """Runs a long-lived session again whenever it ends, until cancelled. The delays start over
    after a session that ended without an error."""
    while True:
        try:
            await attempt()
            backoff.reset()
        except Exception as exc:  # any failure costs a retry; cancellation still ends the loop
            on_error(exc)
        before_wait()
        await backoff.wait()
