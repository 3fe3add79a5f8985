"""The coordinator's memory of each node's change-log position, which a node compares its store
with at start (node.rewind): raised by registrations and heartbeats, never lowered within an
incarnation, started over by a new one."""

from __future__ import annotations

from pathlib import Path

from coordinator.config import CoordinatorLimits
from coordinator.registry import Registry
from coordinator.store import CoordinatorStore
from domicile.cluster import ClusterSpec, RegionSpec

CLUSTER = ClusterSpec(regions=(RegionSpec("eu-west-1", "IE", "EU"),))


def registry(tmp_path: Path) -> Registry:
    return Registry(
        CLUSTER,
        CoordinatorStore(tmp_path),
        heartbeat_interval_ms=1000,
        missed_heartbeats_max=3,
        limits=CoordinatorLimits(),
        clock=lambda: 0.0,
        wall_clock=lambda: 1_700_000_000.0,
        publish=lambda _t: None,
    )


def test_the_head_rises_with_reports_and_never_falls_within_an_incarnation(tmp_path: Path) -> None:
    r = registry(tmp_path)
    assert r.log_head("n1", 0) == 0
    r.register("n1", "eu-west-1", "127.0.0.1:7401", "", epoch=0, last_lsn=5)
    r.heartbeat("n1", last_lsn=12, epoch=0)
    assert r.log_head("n1", 0) == 12
    # A store copied back reports less: the head stays where it was, so it keeps looking rewound.
    r.heartbeat("n1", last_lsn=3, epoch=0)
    r.register("n1", "eu-west-1", "127.0.0.1:7401", "", epoch=0, last_lsn=3)
    assert r.log_head("n1", 0) == 12


def test_a_new_incarnation_starts_its_head_over(tmp_path: Path) -> None:
    r = registry(tmp_path)
    r.register("n1", "eu-west-1", "127.0.0.1:7401", "", epoch=0, last_lsn=40)
    r.register("n1", "eu-west-1", "127.0.0.1:7401", "", epoch=7, last_lsn=0)
    assert r.log_head("n1", 7) == 0
    assert r.log_head("n1", 0) == 0  # another incarnation's position says nothing of this one
    r.heartbeat("n1", last_lsn=2, epoch=7)
    assert r.log_head("n1", 7) == 2
    r.heartbeat("n1", last_lsn=99, epoch=0)  # a late report of the old incarnation
    assert r.log_head("n1", 7) == 2
