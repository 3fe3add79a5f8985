"""Percentiles of raw samples and of Prometheus histograms (as a delta between two scrapes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples: cannot compute a percentile of nothing")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside 0..1")
    data = sorted(samples)
    pos = q * (len(data) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts of one Prometheus histogram series, sorted by upper bound."""

    bounds: tuple[float, ...]  # upper bounds, the last one +Inf
    counts: tuple[float, ...]  # cumulative counts
    total: float  # _sum

    @property
    def count(self) -> float:
        return self.counts[-1] if self.counts else 0.0

    def minus(self, earlier: Histogram | None) -> Histogram:
        """The observations made between the earlier scrape and this one."""
        if earlier is None or not earlier.bounds:
            return self
        if earlier.bounds != self.bounds:
            raise ValueError("histograms have different buckets; cannot subtract them")
        counts = tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True))
        if any(c < 0 for c in counts):
            raise ValueError("histogram went backwards between scrapes (did the process restart?)")
        return Histogram(self.bounds, counts, self.total - earlier.total)

    def quantile(self, q: float) -> float:
        """Like PromQL histogram_quantile: linear interpolation inside the bucket that holds the
        q-th observation, with 0 as the lower edge of the first bucket."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is outside 0..1")
        if self.count <= 0:
            raise ValueError("the histogram has no observations in this interval")
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.counts, strict=True):
            if cumulative >= rank and cumulative > lower_count:
                if math.isinf(bound):
                    # Beyond the last finite bucket nothing is known but the lower edge.
                    return lower_bound
                share = (rank - lower_count) / (cumulative - lower_count)
                return lower_bound + (bound - lower_bound) * share
            lower_bound, lower_count = bound, cumulative
        return lower_bound

    def share_within(self, bound: float) -> float | None:
        """The share of the observations at or below `bound`, exact when `bound` is one of the
        bucket edges, None when it is not. A p99 target on an edge is met exactly when this is
        at least 0.99, whatever interpolating inside the next bucket makes of the p99 (between
        edges 100 and 150 ms, a p99 of 101 ms and one of 140 ms can read alike)."""
        if self.count <= 0:
            raise ValueError("the histogram has no observations in this interval")
        for edge, cumulative in zip(self.bounds, self.counts, strict=True):
            if math.isclose(edge, bound, rel_tol=1e-9):
                return cumulative / self.count
        return None


def p99_within(hist: Histogram, limit_ms: float) -> tuple[bool, float | None]:
    """Whether the p99 of `hist` (seconds) is at most `limit_ms`, and the share of observations
    within it: counted exactly when the limit is a bucket edge, otherwise read from the
    interpolated p99 (share None)."""
    share = hist.share_within(limit_ms / 1000)
    if share is not None:
        return share >= 0.99, share
    return hist.quantile(0.99) * 1000 <= limit_ms, None


def histogram_from_text(text: str, name: str, labels: dict[str, str]) -> Histogram | None:
    """The series of histogram `name` whose labels include `labels`, from /metrics text; None
    when the series does not exist yet (nothing observed)."""
    buckets: list[tuple[float, float]] = []
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if any(sample.labels.get(k) != v for k, v in labels.items()):
                continue
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), float(sample.value)))
            elif sample.name == f"{name}_sum":
                total = float(sample.value)
    if not buckets:
        return None
    buckets.sort()
    return Histogram(tuple(b for b, _ in buckets), tuple(c for _, c in buckets), total)
