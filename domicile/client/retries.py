"""How a call is retried: the retry policy, the one deadline a call has, and what the retry loop
knows between attempts."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from domicile.errors import DeadlineExceeded, DomicileError, InvalidArgument, PlacementRefused, Unavailable
from domicile.topology import NodeInfo


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of errors whose `retriable` is True: bounded attempts, exponential backoff with
    full jitter. The call's deadline bounds the total as well.

    Writes are retried too. A write whose first attempt was applied but never acknowledged
    (the connection broke, the deadline passed) is then applied twice: harmless in an lww
    namespace, two equal siblings in a siblings namespace. attempts_max=1 rules that out.
    """

    attempts_max: int = 4
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise InvalidArgument(f"attempts_max is {self.attempts_max}; at least 1 is required")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise InvalidArgument("backoff times must satisfy 0 <= backoff_initial_s <= backoff_max_s")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Pause before retry number `retry` (1-based)."""
        cap = min(self.backoff_max_s, self.backoff_initial_s * self.multiplier ** (retry - 1))
        return rng.uniform(0, cap)


class Deadline:
    def __init__(self, seconds: float, what: str) -> None:
        self._seconds = seconds
        self._end = time.monotonic() + seconds
        self._what = what

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"{self._what}: the deadline of {self._seconds:g}s passed")
        return left

    def share(self, fraction: float, cap_s: float) -> float:
        """A part of what remains, at most cap_s: the time for a step that must leave the rest
        of the call its time."""
        return min(self.remaining() * fraction, cap_s)


@dataclass
class Attempt:
    """What the retry loop knows between attempts of one call."""

    region: str | None
    write: bool
    allowed_regions: tuple[str, ...] | None = None
    placement_retried: bool = False
    retries: int = 0
    refresh: bool = False
    node_id: str | None = None
    avoid: set[str] = field(default_factory=set)

    def next_step(self, error: DomicileError, node: NodeInfo | None, policy: RetryPolicy) -> bool:
        """Updates the plan after `error`; False when the error must be raised."""
        if (
            isinstance(error, PlacementRefused)
            and self.write
            and self.region is None
            and not self.placement_retried
            and error.allowed_regions
        ):
            self.placement_retried = True
            self.allowed_regions = error.allowed_regions
            return True
        if not error.retriable or self.retries + 1 >= policy.attempts_max:
            return False
        self.retries += 1
        if isinstance(error, Unavailable):
            self.refresh = True
            if node is not None:
                self.avoid.add(node.node_id)
        return True

    def backoff_s(self, error: DomicileError, policy: RetryPolicy, rng: random.Random) -> float:
        return 0.0 if isinstance(error, PlacementRefused) else policy.backoff_s(self.retries, rng)


def call_deadline(default_s: float, override_s: float | None, what: str) -> Deadline:
    if override_s is not None and not override_s > 0:
        raise InvalidArgument(f"deadline_s is {override_s}; it must be positive")
    return Deadline(override_s or default_s, what)


def check_client_options(deadline_s: float, retry: RetryPolicy | None, topology_ttl_s: float) -> RetryPolicy:
    if not deadline_s > 0:
        raise InvalidArgument(f"deadline_s is {deadline_s}; it must be positive")
    if topology_ttl_s < 0:
        raise InvalidArgument(f"topology_ttl_s is {topology_ttl_s}; it must be 0 or more")
    return retry or RetryPolicy()
