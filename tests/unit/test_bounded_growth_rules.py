"""The rules of bounded growth, without a store: how far the change log may be truncated, and
which tombstoned key states may be purged."""

from __future__ import annotations

from domicile.causality import CausalContext, Dot, KeyState, Version
from domicile.hlc import pack
from domicile.subjects import HoldScope, LegalHold
from node.engine.base import LogStart
from node.replication.tombstone_gc import purgeable
from node.replication.truncation import truncation_point

ME = "eu-west-1"


def test_truncation_stops_at_the_least_acknowledged_link_and_the_backup() -> None:
    assert truncation_point(100, {"a": 40, "b": 70}, None) == 40
    assert truncation_point(100, {"a": 90}, 60) == 60
    # No links: everything this node wrote is held by every replica there is.
    assert truncation_point(100, {}, None) == 100
    # A link without a sender yet: nothing goes, whatever the others acknowledged.
    assert truncation_point(100, None, 100) == 0


def tombstone(node: str, counter: int, ms: int, subject: str = "") -> Version:
    return Version(dot=Dot(node, counter), value=b"", hlc=pack(ms, 0), tombstone=True, subject_id=subject)


def state(*versions: Version) -> KeyState:
    return KeyState(versions, CausalContext.of(dots=[v.dot for v in versions]))


def may_purge(
    s: KeyState, *, start_ms: int = 5_000, cutoff_ms: int = 10_000, holds: tuple[LegalHold, ...] = ()
) -> bool:
    return purgeable(
        s, namespace="ns", key="k", writer_id=ME, log_start=LogStart(7, pack(start_ms, 0)),
        cutoff_hlc=pack(cutoff_ms, 0), holds=holds,
    )  # fmt: skip


def test_an_old_acknowledged_tombstone_is_purged() -> None:
    assert may_purge(state(tombstone(ME, 1, 4_000)))


def test_a_tombstone_after_the_truncation_point_is_kept_until_every_replica_acknowledged() -> None:
    assert not may_purge(state(tombstone(ME, 1, 6_000)))
    assert may_purge(state(tombstone(ME, 1, 6_000)), start_ms=6_000)


def test_a_tombstone_younger_than_the_horizon_is_kept() -> None:
    assert not may_purge(state(tombstone("other", 1, 12_000)))
    # Another writer's tombstone goes on its horizon alone.
    assert may_purge(state(tombstone("other", 1, 9_000)))


def test_live_versions_and_holds_keep_a_state() -> None:
    live = Version(dot=Dot(ME, 2), value=b"v", hlc=pack(1_000, 0))
    assert not may_purge(state(tombstone(ME, 1, 1_000), live))
    hold = LegalHold("h1", HoldScope.SUBJECT, subject_id="s-1")
    assert not may_purge(state(tombstone(ME, 1, 1_000, subject="s-1")), holds=(hold,))
    assert may_purge(state(tombstone(ME, 1, 1_000, subject="s-2")), holds=(hold,))
