"""Bounded clocks on the writing side: a node whose clock runs far ahead stops writing.

Peers refuse a replicated write whose HLC is further ahead of their clock than
max_clock_drift_ms (node.replication.inbound). A node whose own wall clock runs minutes ahead
would go on acknowledging writes that every peer then refuses: they would live on that node
only. So the node compares its clock with the coordinator's, which every registration and
heartbeat answer carries, and refuses writes (UNAVAILABLE, naming the skew) while its next
timestamp would be further ahead than the peers accept. It writes again as soon as a sample
says the clock is right.

"Its next timestamp" is the later of its wall clock and the last HLC it issued: the HLC never
goes backwards (node.clock_file), so a node that ran ahead and was corrected keeps refusing
until the real time has caught up with what it issued.

Between samples the coordinator's time is extrapolated on the monotonic clock, so a wall clock
that jumps ahead while the coordinator is unreachable is caught at once. Before the first
sample (no coordinator, or one that never answered) nothing is refused: the node then trusts its
own clock, as it did before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from domicile import errors
from domicile.hlc import wall_ms


@dataclass(frozen=True)
class _Sample:
    reference_ms: int  # the coordinator's clock at the midpoint of the round trip
    monotonic_s: float  # this node's monotonic clock at that midpoint
    uncertainty_ms: int  # half the round trip: how far off the midpoint may be


class ClockGuard:
    def __init__(
        self,
        max_drift_ms: int,
        last_issued_ms: Callable[[], int],
        wall: Callable[[], int] = wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[int, bool], None] = lambda _ahead_ms, _refusing: None,
    ) -> None:
        """`last_issued_ms`: the physical part of the last HLC this node issued. `on_change` is
        called with (how far ahead, refusing) after every sample, for the metrics."""
        self.max_drift_ms = max_drift_ms
        self._last_issued_ms = last_issued_ms
        self._wall = wall
        self._monotonic = monotonic
        self._on_change = on_change
        self._sample: _Sample | None = None
        self._lock = threading.Lock()

    def sample(self, sent_monotonic_s: float, reference_ms: int, received_monotonic_s: float) -> None:
        """Records the coordinator's clock `reference_ms`, read by a call sent and answered at
        these monotonic times (the answer is taken as read halfway: the error is at most half
        the round trip, which the refusal gives the node the benefit of)."""
        if reference_ms <= 0:
            return  # a coordinator that does not send its time
        midpoint = (sent_monotonic_s + received_monotonic_s) / 2
        uncertainty_ms = int((received_monotonic_s - sent_monotonic_s) * 500)
        with self._lock:
            self._sample = _Sample(reference_ms, midpoint, uncertainty_ms)
        ahead = self.ahead_ms()
        assert ahead is not None
        self._on_change(ahead, self.refusal() is not None)

    def recheck(self) -> None:
        """Tells on_change how things stand now against the last sample: the clock moves between
        samples (which come only with the coordinator's answers), and with it whether writes
        are refused; the metrics must follow while the coordinator is away."""
        ahead = self.ahead_ms()
        if ahead is not None:
            self._on_change(ahead, self.refusal() is not None)

    def ahead_ms(self) -> int | None:
        """How far this node's next timestamp is ahead of the coordinator's clock now (negative
        when behind); None before the first sample."""
        with self._lock:
            sample = self._sample
        if sample is None:
            return None
        reference_now = sample.reference_ms + int((self._monotonic() - sample.monotonic_s) * 1000)
        return max(self._wall(), self._last_issued_ms()) - reference_now

    def refusal(self) -> errors.Unavailable | None:
        """The error a write gets while this node's clock runs too far ahead; None when it may write."""
        ahead = self.ahead_ms()
        with self._lock:
            sample = self._sample
        # A slow round trip must not make an honest clock look ahead: only what is certainly
        # beyond the bound is refused.
        if ahead is None or sample is None or ahead - sample.uncertainty_ms <= self.max_drift_ms:
            return None
        return errors.Unavailable(
            f"this node's clock is {ahead / 1000:.1f} s ahead of the coordinator's; peers refuse "
            f"timestamps more than {self.max_drift_ms} ms ahead (max_clock_drift_ms), so it takes "
            "no writes until its clock is right (check NTP on its host); write through another node"
        )

    def distrusted(self) -> bool:
        """Whether refusal() would refuse now, without building its error: the clock asks this
        at every timestamp it issues, so it reads the sample once (samples are immutable and
        replaced whole, so one read needs no lock)."""
        sample = self._sample
        if sample is None:
            return False
        reference_now = sample.reference_ms + int((self._monotonic() - sample.monotonic_s) * 1000)
        ahead = max(self._wall(), self._last_issued_ms()) - reference_now
        return ahead - sample.uncertainty_ms > self.max_drift_ms

    def check(self) -> None:
        if not self.distrusted():
            return
        refused = self.refusal()
        if refused is not None:
            raise refused
