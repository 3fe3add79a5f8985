"""Where replication lag goes: each batch's time in each stage, per link.

Lag is a record's apply time at the target minus its commit HLC at the source. The stages split
it: at the source, `ship` (commit to the batch's write on the stream); at the target, `arrive`
(commit to the start of the batch's apply: the source's ship, the network, the target's queue),
then `check`, `seal`, `audit` and `commit` of the apply itself. The commit-relative stages use
the batch's oldest record (the one that waited longest); the apply stages a monotonic clock.
They are the domicile_replication_stage_seconds histogram (label link "source->target").
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Histogram

from domicile.hlc import physical_ms, wall_ms
from node.metrics import NodeMetrics


class Stages:
    """The stage histograms of one link."""

    def __init__(self, metrics: NodeMetrics, source: str, target: str) -> None:
        self._histogram = metrics.replication_stage
        self._link = f"{source}->{target}"
        self._children: dict[str, Histogram] = {}

    def observe(self, stage: str, seconds: float) -> None:
        child = self._children.get(stage)
        if child is None:
            child = self._children[stage] = self._histogram.labels(self._link, stage)
        child.observe(max(0.0, seconds))

    def since_commit(self, stage: str, hlc: int, now_ms: Callable[[], int] = wall_ms) -> None:
        """Observes the time from the commit of the record with HLC `hlc` to now."""
        self.observe(stage, (now_ms() - physical_ms(hlc)) / 1000.0)

    def timer(self) -> StageTimer:
        return StageTimer(self)


class StageTimer:
    """Consecutive stages of one batch: each mark() observes the time since the one before."""

    def __init__(self, stages: Stages) -> None:
        self._stages = stages
        self._at = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self._stages.observe(stage, now - self._at)
        self._at = now
