"""Continuous backups to the region's bucket on a real S3 server (SeaweedFS): what goes up,
what never does, that verify catches damage, and that a bucket outside the region's
jurisdiction stops the node."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from domicile.backup import format as fmt
from domicile.backup.bucket import Bucket
from domicile.backup.catalog import Catalog
from domicile.backup.residency import BUCKET_RULE
from domicile.cli.main import main
from domicile.cluster import BackupSpec, load_cluster
from domicile.errors import InvalidArgument
from domicile.hlc import pack, wall_ms
from domicile.s3_server import SeaweedServer
from domicile.wire.topology import topology_to_pb, with_backup
from node.backup import restore
from node.backup.shipper import BackupShipper, LogGap
from node.engine.base import LocalWrite
from node.engine.factory import SQLITE_FILE
from node.engine.sqlite import SQLiteEngine
from node.metrics import NodeMetrics
from tests.support.cluster import LocalCluster, eventually
from tests.support.s3 import backup_settings, backup_spec

REGION = "eu-west-1"
PLAINTEXT = b"backup-plaintext-marker-7f3a"
SUBJECT = "subject-backup-marker-c41d"


async def _cluster(tmp_path: Path, s3: SeaweedServer, **backup: object) -> LocalCluster:
    cluster = LocalCluster(tmp_path, [REGION], backups={REGION: backup_settings(s3, REGION, **backup)})
    cluster.node_overrides["backup_interval_s"] = 0.1
    await cluster.start_linked()
    return cluster


def _catalog(cluster: LocalCluster) -> Catalog:
    spec = load_cluster(cluster.config_path).region(REGION).backup  # type: ignore[union-attr]
    assert spec is not None
    return Catalog(Bucket(spec), spec.prefix)


# Rounds are 0.1 s apart in these tests, but each ships through a local S3 server: on a loaded
# 2-core machine a round has taken longer than 20 s.
SHIPPED_WITHIN_S = 60.0


async def _shipped(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]

    async def caught_up() -> bool:
        shipper = node.backup
        return (
            shipper is not None
            and bool(shipper.state.generation)
            and (shipper.state.shipped_lsn == node.engine.last_lsn())
        )

    await eventually(caught_up, SHIPPED_WITHIN_S, "the backup caught up with the change log")


async def test_a_node_ships_a_base_snapshot_then_segments_and_verify_accepts_them(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    cluster = await _cluster(tmp_path, s3)
    try:
        for i in range(20):
            await cluster.put(REGION, "prefs_eu", f"before-{i}", b"v")
        await _shipped(cluster)
        for i in range(30):
            await cluster.put(
                REGION, "customers_eu", f"c-{i}", PLAINTEXT, subject_id=SUBJECT, subject_jurisdiction="IE"
            )
        await _shipped(cluster)
        node = cluster.nodes[REGION]
        assert node.metrics.backup_objects._value.get() >= 3  # manifest, a part, a segment
        assert node.metrics.backup_last_shipped._value.get() > time.time() - 10
        catalog = _catalog(cluster)
        report = await asyncio.to_thread(catalog.verify, REGION)
        assert report.ok, report.problems
        assert report.log_entries >= 30
        assert report.window_start_ms <= report.window_end_ms
        # What never leaves the node's store: the plaintext of sealed values, and, in object
        # names and metadata, any key, namespace or subject.
        bucket = catalog.bucket
        for obj in bucket.objects(catalog.prefix):
            body, meta = bucket.get(obj.key)
            assert PLAINTEXT not in body, obj.key
            described = obj.key + repr(meta)
            for personal in (SUBJECT, "customers_eu", "c-1", "before-"):
                assert personal not in described
            assert set(meta) <= {fmt.META_SHA256, fmt.META_FIRST_LSN, fmt.META_LAST_LSN, fmt.META_NEWEST_MS}
    finally:
        await cluster.stop()


def _cli(cluster: LocalCluster, *args: str) -> int:
    return main(["backup", *args, "--region", REGION, "--config", str(cluster.config_path)])


async def test_verify_reports_a_damaged_object_and_a_missing_segment(
    tmp_path: Path, s3: SeaweedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = await _cluster(tmp_path, s3)
    try:
        # Four rounds: the first may go up with the base snapshot, and the segment removed
        # below must not be the last (a generation's end is where its last segment ends).
        for round_ in range(4):
            for i in range(5):
                await cluster.put(REGION, "prefs_eu", f"k{round_}-{i}", b"v")
            await _shipped(cluster)
    finally:
        await cluster.stop()
    catalog = _catalog(cluster)
    [generation] = catalog.generations(REGION)
    assert len(generation.segments) >= 3, [(s.first_lsn, s.last_lsn) for s in generation.segments]
    assert catalog.verify(REGION).ok
    assert _cli(cluster, "verify") == 0
    assert "eu-west-1: OK: 1 generations" in capsys.readouterr().out
    assert _cli(cluster, "list") == 0 and generation.name in capsys.readouterr().out
    assert _cli(cluster, "status", "--json") == 0
    assert f'"last_lsn": {generation.last_lsn}' in capsys.readouterr().out
    # A segment overwritten with other bytes under its old sha256: damage.
    first, second = generation.segments[0], generation.segments[1]
    body, meta = catalog.bucket.get(first.key)
    catalog.bucket._s3.put_object(
        Bucket=catalog.bucket.name, Key=first.key, Body=body[:-1] + b"X", Metadata=meta
    )
    report = catalog.verify(REGION)
    assert not report.ok and any("does not match its sha256" in p for p in report.problems)
    assert _cli(cluster, "verify") == 1 and "DAMAGED" in capsys.readouterr().out
    # A segment gone: its positions are missing.
    catalog.bucket.delete_prefix(second.key)
    report = catalog.verify(REGION)
    assert any(f"positions {second.first_lsn}..{second.last_lsn} are missing" in p for p in report.problems)


async def test_a_generation_past_retention_is_deleted_and_the_newest_kept(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    cluster = await _cluster(tmp_path, s3, retention_days=1)
    try:
        await cluster.put(REGION, "prefs_eu", "k", b"v")
        await _shipped(cluster)
        shipper = cluster.nodes[REGION].backup
        assert shipper is not None
        await asyncio.to_thread(shipper.stop)  # the test drives the rounds from here
        catalog = _catalog(cluster)
        first = catalog.generations(REGION)[0].name
        # Two more generations, the clock two days on: the first is no longer needed.
        real = shipper.clock_ms
        shipper.clock_ms = lambda: real() + 2 * 86_400_000
        await asyncio.to_thread(shipper.start_generation)
        shipper.clock_ms = lambda: real() + 4 * 86_400_000
        await asyncio.to_thread(shipper.start_generation)
        deleted = await asyncio.to_thread(shipper.expire)
        names = [g.name for g in catalog.generations(REGION)]
        assert first in deleted and first not in names
        assert shipper.state.generation in names and len(names) == 2
    finally:
        await cluster.stop()


@pytest.mark.parametrize(
    ("bucket_region", "why"),
    [
        ("us-east-1", "a backup never leaves its region's country and jurisdiction"),
        ("eu-central-1", "a backup never leaves its region's country and jurisdiction"),
    ],
)
async def test_the_coordinator_refuses_to_start_with_a_bucket_outside_its_regions_jurisdiction(
    tmp_path: Path, s3: SeaweedServer, bucket_region: str, why: str
) -> None:
    cluster = LocalCluster(
        tmp_path, [REGION], backups={REGION: backup_settings(s3, REGION, bucket_region=bucket_region)}
    )
    try:
        with pytest.raises(InvalidArgument) as refused:
            await cluster.start_coordinator()
        assert BUCKET_RULE in refused.value.message and why in refused.value.message
    finally:
        await cluster.stop()


async def test_the_backup_section_comes_with_the_topology_and_a_bucket_outside_stops_backups_and_the_node(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """The node reads no backup section of its own: the coordinator sends its region's. One
    that names a bucket outside the jurisdiction (a coordinator of another version, say) stops
    the backups at once and the node at its next start."""
    cluster = await _cluster(tmp_path, s3)
    try:
        node = cluster.nodes[REGION]
        await _shipped(cluster)
        topology = node.view.topology
        assert topology.backup == load_cluster(cluster.config_path).region(REGION).backup  # type: ignore[union-attr]
        outside = dataclasses.replace(topology.backup, bucket_region="us-east-1")  # type: ignore[type-var]
        changed = dataclasses.replace(topology, revision=topology.revision + 1, backup=outside)
        await node._adopt_topology(changed, with_backup(topology_to_pb(changed), outside).SerializeToString())
        assert node.view.revision == changed.revision
        assert node._backup_switch is not None
        await node._backup_switch
        assert node.backup is None
        assert node.metrics.registry.get_sample_value("domicile_backup_enabled") == 0
        await cluster.stop_node(REGION)
        with pytest.raises(InvalidArgument) as refused:
            await cluster.start_node(REGION)
        assert BUCKET_RULE in refused.value.message and "us-east-1" in refused.value.message
    finally:
        await cluster.stop()


# -- a log truncated past what was shipped --------------------------------------------------------

T0 = 1_800_000_000_000


def _shipper(engine: SQLiteEngine, spec: BackupSpec, clock_ms: Callable[[], int] = wall_ms) -> BackupShipper:
    return BackupShipper(
        engine, Bucket(spec), spec, REGION, REGION, NodeMetrics(REGION, REGION), clock_ms=clock_ms
    )


def _write(engine: SQLiteEngine, key: str, ms: int) -> None:
    (committed,) = engine.commit_local([LocalWrite("prefs_eu", key, b"v")], lambda: pack(ms, 0))
    assert not isinstance(committed, Exception), committed


def test_regression_a_log_truncated_past_the_shipped_position_ends_the_generation_without_a_segment(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """A segment is named after the positions it holds; one shipped from a log truncated past
    the shipped position held fewer (4..8 named, 7..8 inside), and restore and verify failed on it."""
    engine = SQLiteEngine(str(tmp_path / "s.sqlite3"), REGION, REGION, synchronous="OFF")
    spec = backup_spec(s3, REGION, generation_hours=1)
    shipper = _shipper(engine, spec)
    try:
        for i in range(3):
            _write(engine, f"k{i}", T0 + i)
        shipper.round()  # a generation with base position 3
        first = shipper.state.generation
        for i in range(3, 8):
            _write(engine, f"k{i}", T0 + i)
        engine.truncate_log(6, 1000)  # past the shipped position: 4..6 are gone
        with pytest.raises(LogGap, match="continues at position 7, not 4"):
            shipper.ship_pending()
        catalog = Catalog(Bucket(spec), spec.prefix)
        [generation] = catalog.generations(REGION)
        assert generation.segments == [] and shipper.state.shipped_lsn == 3
        # A round starts a new generation from the log as it is, and counts the failure.
        shipper.round()
        assert shipper.state.generation != first and shipper.state.shipped_lsn == 8
        assert shipper.metrics.backup_failures._value.get() == 1
        # The positions between the generations are in no segment, and verify says so.
        report = catalog.verify(REGION)
        assert len(report.problems) == 1 and "positions 4..8 before its base position" in report.problems[0]
        # A log truncated through its last entry: nothing to read, and still a gap.
        _write(engine, "k8", T0 + 8)
        engine.truncate_log(9, 1000)
        with pytest.raises(LogGap, match="continues at position 10, not 9"):
            shipper.ship_pending()
    finally:
        engine.close()


async def test_regression_the_old_shipper_holds_truncation_until_it_has_stopped(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """When the backup section changes, the old shipper's last round ships what is pending from
    its position: the truncator, running meanwhile, must not cut the log past that position."""
    cluster = LocalCluster(tmp_path, [REGION], backups={REGION: backup_settings(s3, REGION)})
    cluster.node_overrides["backup_interval_s"] = 0.1
    cluster.node_overrides["changelog_truncate_interval_s"] = 0  # passes run when the test says
    await cluster.start_linked()
    try:
        node = cluster.nodes[REGION]
        old = node.backup
        assert old is not None
        await cluster.put(REGION, "prefs_eu", "shipped", b"v")
        await _shipped(cluster)
        # The shipper's next round is an hour away: what is written now stays pending.
        old.interval_s = 3600
        await cluster.put(REGION, "prefs_eu", "after-interval-change", b"v")
        # The round under way (0.1 s apart) may ship this write or not: had the shipper already
        # begun its hour-long wait, waiting to see it shipped would wait an hour. Half a second
        # lets that round end; the write is pending or shipped, and the old shipper's last
        # round below ships whatever is pending either way.
        await asyncio.sleep(0.5)
        for i in range(5):
            await cluster.put(REGION, "prefs_eu", f"pending-{i}", b"v")
        loop = asyncio.get_running_loop()
        real_stop = old.stop

        def stop_with_a_truncation_pass_and_writes_meanwhile(timeout_s: float = 10.0) -> bool:
            # What may happen while the daemon waits for the old shipper to stop.
            asyncio.run_coroutine_threadsafe(node.truncator.pass_once(), loop).result(10)
            for i in range(3):
                put = cluster.put(REGION, "prefs_eu", f"during-stop-{i}", b"v")
                asyncio.run_coroutine_threadsafe(put, loop).result(10)
            return real_stop(timeout_s)

        old.stop = stop_with_a_truncation_pass_and_writes_meanwhile  # type: ignore[method-assign]
        topology = node.view.topology
        assert topology.backup is not None
        moved = dataclasses.replace(topology.backup, prefix=topology.backup.prefix + "moved/")
        changed = dataclasses.replace(topology, revision=topology.revision + 1, backup=moved)
        await node._adopt_topology(changed, with_backup(topology_to_pb(changed), moved).SerializeToString())
        assert node._backup_switch is not None
        await node._backup_switch  # in the background: the topology's other changes go on
        assert node.backup is not None and node.backup is not old
        # The old prefix holds every write up to the change, in segments that continue.
        catalog = Catalog(old.bucket, old.spec.prefix)
        report = await asyncio.to_thread(catalog.verify, REGION)
        assert report.ok, report.problems
        generations = catalog.generations(REGION)
        assert generations[-1].last_lsn == old.state.shipped_lsn
        restored = tmp_path / "restored"
        summary = await asyncio.to_thread(restore.restore, old.spec, REGION, REGION, restored)
        engine = SQLiteEngine(str(restored / SQLITE_FILE), f"{REGION}.{summary.epoch}", REGION)
        try:
            for key in [
                "shipped",
                *(f"pending-{i}" for i in range(5)),
                *(f"during-stop-{i}" for i in range(3)),
            ]:
                assert engine.get("prefs_eu", key) is not None, key
        finally:
            engine.close()
    finally:
        await cluster.stop()
