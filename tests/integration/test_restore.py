"""Restore from the region's bucket (a real S3 server): to the newest write or a point in time,
as a new incarnation whose new writes no peer mistakes for ones it already has."""

from __future__ import annotations

import asyncio
import datetime
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pymongo
import pytest

from domicile.backup import format as fmt
from domicile.backup.bucket import Bucket, StoredObject
from domicile.backup.catalog import Catalog, Segment
from domicile.cluster import BackupSpec
from domicile.errors import DataCorruption, FailedPrecondition, Unavailable
from domicile.hlc import pack
from domicile.s3_server import SeaweedServer
from domicile.subjects import RequestStatus
from node.backup import restore
from node.backup import shipper as shipper_module
from node.backup.shipper import BackupShipper
from node.engine.base import LocalWrite
from node.engine.factory import SQLITE_FILE
from node.engine.mongo import MongoEngine
from node.engine.sqlite import SQLiteEngine
from node.incarnation import read_epoch
from node.metrics import NodeMetrics
from tests.support.cluster import LocalCluster, eventually
from tests.support.mongo import MongoServer
from tests.support.s3 import backup_settings, backup_spec

WEST, CENTRAL = "eu-west-1", "eu-central-1"


async def _shipped(cluster: LocalCluster, region: str) -> None:
    node = cluster.nodes[region]

    async def caught_up() -> bool:
        shipper = node.backup
        return (
            shipper is not None
            and bool(shipper.state.generation)
            and (shipper.state.shipped_lsn == node.engine.last_lsn())
        )

    await eventually(caught_up, 20.0, "the backup caught up with the change log")


async def new_chain_anchored(cluster: LocalCluster, epoch: int) -> None:
    async def anchored() -> bool:
        held = cluster.audit_heads().get(WEST)
        return held.incarnation == epoch and held.head.size > 0

    await eventually(anchored, 10.0, "the new incarnation's audit chain on record")


def _restore(cluster: LocalCluster, data_dir: Path, *extra: str) -> int:
    args = ["--region", WEST, "--config", str(cluster.config_path), "--data-dir", str(data_dir), *extra]
    return restore.main(args)


async def test_restore_to_a_point_in_time_comes_back_as_a_new_incarnation_peers_accept(
    tmp_path: Path, s3: SeaweedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = LocalCluster(tmp_path, [WEST, CENTRAL], backups={WEST: backup_settings(s3, WEST)})
    cluster.node_overrides["backup_interval_s"] = 0.1
    await cluster.start_linked()
    try:
        for i in range(10):
            await cluster.put(WEST, "prefs_eu", f"early-{i}", b"early")
        await _shipped(cluster, WEST)
        await asyncio.sleep(0.05)
        point = datetime.datetime.now(datetime.UTC)
        await asyncio.sleep(0.05)
        for i in range(10):
            await cluster.put(WEST, "prefs_eu", f"late-{i}", b"late")
        await _shipped(cluster, WEST)

        async def central_has_late() -> bool:
            return await cluster.values(CENTRAL, "prefs_eu", "late-9") == {b"late"}

        await eventually(central_has_late, 10.0, "eu-central-1 holds the late writes")
        await cluster.stop_node(WEST)
        # The disk is lost; the key store (kept apart from the store) is not.
        to_point, newest = tmp_path / "restored-at-point", tmp_path / "restored-newest"
        assert _restore(cluster, to_point, "--to", point.isoformat()) == 0
        summary = capsys.readouterr().out
        # Through the tenth write, whatever the first generation's snapshot already held (its
        # first round may come after the first writes).
        assert "through position 10 " in summary and "new incarnation" in summary, summary
        assert _restore(cluster, newest) == 0
        assert "through position 20 " in capsys.readouterr().out
        assert _restore(cluster, newest) == 1  # never over an existing store
        assert "already holds a store" in capsys.readouterr().err
        epoch = read_epoch(to_point)
        assert epoch >= int(time.time()) - 60

        node = await cluster.start_node(WEST, data_dir=str(to_point), region_dir=str(tmp_path / WEST))
        assert node.engine.node_id == f"{WEST}.{epoch}"
        assert await cluster.values(WEST, "prefs_eu", "early-9") == {b"early"}
        assert (await cluster.get(WEST, "prefs_eu", "late-0")).versions == []  # after the point
        # The restored node writes the key the old incarnation wrote after the point: a reused
        # dot (eu-west-1:1) or log position would be dropped at eu-central-1 as a duplicate.
        await cluster.put(WEST, "prefs_eu", "late-0", b"after-restore")
        await cluster.put(WEST, "prefs_eu", "fresh", b"after-restore")

        async def central_took_them() -> bool:
            late = await cluster.get(CENTRAL, "prefs_eu", "late-0")
            dots = {v.dot.node_id for v in late.versions}
            return await cluster.values(CENTRAL, "prefs_eu", "fresh") == {b"after-restore"} and (
                f"{WEST}.{epoch}" in dots
            )

        await eventually(central_took_them, 15.0, "eu-central-1 applied the new incarnation's writes")
        # The new incarnation's audit chain is anchored, signed with the key the node's
        # certificate binds, and the old incarnation's is closed and kept.
        await new_chain_anchored(cluster, epoch)
        ((closed),) = cluster.audit_heads().closed(WEST)
        assert (
            closed.incarnation == 0
            and closed.head.public_key == cluster.audit_heads().get(WEST).head.public_key
        )
        # Regression: a peer's write superseding the old incarnation's version names the old
        # writer's counter, which the restored store never issued; only the new writer id's
        # counters are this node's to vouch for, so the write is applied, not refused as forged.
        await cluster.put(CENTRAL, "prefs_eu", "late-1", b"from-central")

        async def west_took_it() -> bool:
            return await cluster.values(WEST, "prefs_eu", "late-1") == {b"from-central"}

        await eventually(west_took_it, 15.0, "the restored node applied a peer's superseding write")
        # The backup of the new incarnation starts a generation of its own.
        await _shipped(cluster, WEST)
        assert node.backup is not None and node.backup.epoch == epoch
    finally:
        await cluster.stop()


async def test_regression_a_node_restored_on_an_insecure_port_anchors_its_new_chain(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    # On an insecure port the audit-head key is audit-signing.key in the data directory, which
    # the restore starts anew: the new chain's first head, signed with a new key, was refused
    # for good ("a node's log keeps its key"), and the restored node was never anchored again.
    cluster = LocalCluster(
        tmp_path, [WEST, CENTRAL], backups={WEST: backup_settings(s3, WEST)}, insecure=True
    )
    cluster.node_overrides["backup_interval_s"] = 0.1
    await cluster.start_linked()
    try:
        for i in range(5):
            await cluster.put(WEST, "prefs_eu", f"k-{i}", b"v")
        await _shipped(cluster, WEST)
        old_key = cluster.nodes[WEST].audit.head().public_key
        await cluster.stop_node(WEST)
        restored = tmp_path / "restored"
        assert _restore(cluster, restored) == 0
        node = await cluster.start_node(WEST, data_dir=str(restored), region_dir=str(tmp_path / WEST))
        assert node.audit.head().public_key != old_key
        await cluster.put(WEST, "prefs_eu", "after-restore", b"v")
        await new_chain_anchored(cluster, read_epoch(restored))
        ((closed),) = cluster.audit_heads().closed(WEST)
        assert closed.head.public_key == old_key
        assert cluster.audit_heads().get(WEST).head.public_key == node.audit.head().public_key
        assert node.metrics.audit_export_refused._value.get() == 0
    finally:
        await cluster.stop()


def test_a_time_before_every_generation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no backup generation had finished its snapshot by"):
        restore.choose_generation([], 1)
    with pytest.raises(Exception, match="RFC 3339"):
        restore.parse_time("yesterday")
    with pytest.raises(Exception, match="no time zone"):
        restore.parse_time("2026-12-01T10:00:00")


SUBJECT = "cust-erased-after-backup"


async def test_an_erasure_after_the_backup_point_wins_over_the_restore(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    cluster = LocalCluster(tmp_path, [WEST, CENTRAL], backups={WEST: backup_settings(s3, WEST)})
    cluster.node_overrides["backup_interval_s"] = 0.1
    await cluster.start_linked()
    try:
        for i in range(3):
            await cluster.put(
                WEST, "customers_eu", f"c-{i}", b"personal", subject_id=SUBJECT, subject_jurisdiction="IE"
            )
        await cluster.put(
            WEST, "customers_eu", "other", b"kept", subject_id="cust-2", subject_jurisdiction="IE"
        )
        await _shipped(cluster, WEST)
        await asyncio.sleep(0.05)
        point = datetime.datetime.now(datetime.UTC)
        async with cluster.async_client(deadline_s=5.0) as client:
            request = await client.erase_subject(SUBJECT, "the customer asked", "IE")

            async def completed() -> bool:
                return (await client.subject_request(request.request_id)).status is RequestStatus.COMPLETED

            await eventually(completed, 20.0, "the erasure completed in every region")
        await cluster.stop_node(WEST)
        restored = tmp_path / "restored"
        assert _restore(cluster, restored, "--to", point.isoformat()) == 0
        await cluster.start_node(WEST, data_dir=str(restored), region_dir=str(tmp_path / WEST))

        async def gone_everywhere() -> bool:
            for region in (WEST, CENTRAL):
                for i in range(3):
                    if any(
                        not v.tombstone
                        for v in (await cluster.get(region, "customers_eu", f"c-{i}")).versions
                    ):
                        return False
            return True

        await eventually(gone_everywhere, 20.0, "the restored remnants of the erased subject tombstoned")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.put(
                WEST, "customers_eu", "c-new", b"again", subject_id=SUBJECT, subject_jurisdiction="IE"
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert request.request_id in (refused.value.details() or "")
        assert await cluster.values(WEST, "customers_eu", "other") == {b"kept"}
    finally:
        await cluster.stop()


async def test_restore_into_a_mongodb_database_with_progress_and_summary(
    tmp_path: Path, s3: SeaweedServer, mongo_server: MongoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node on MongoDB whose database is lost is rebuilt into a new database from its bucket
    (real SecantusDB and SeaweedFS); a database that already holds a store of the node is
    refused and left as it was."""
    cluster = LocalCluster(tmp_path, [WEST], backups={WEST: backup_settings(s3, WEST)})
    cluster.node_overrides["backup_interval_s"] = 0.1
    lost = mongo_server.database_name("lost")
    cluster.region_overrides[WEST] = {
        "engine": "mongodb",
        "mongodb_uri": mongo_server.uri,
        "mongodb_database": lost,
    }
    await cluster.start_linked()
    try:
        for i in range(12):
            await cluster.put(WEST, "prefs_eu", f"k-{i}", f"v-{i}".encode())
        await _shipped(cluster, WEST)
        await cluster.stop_node(WEST)
        rebuilt, incarnation_dir = mongo_server.database_name("rebuilt"), tmp_path / "restored"
        mongo = ["--mongodb-uri", mongo_server.uri, "--mongodb-database", rebuilt]
        assert _restore(cluster, incarnation_dir, *mongo) == 0
        out, err = capsys.readouterr()
        assert "12 log entries" in out and f"into database {rebuilt}" in out and "new incarnation" in out
        assert "restore: generation" in err and "restore: segment" in err  # the progress lines
        assert not (incarnation_dir / "store.sqlite3").exists()
        epoch = read_epoch(incarnation_dir)

        node = await cluster.start_node(
            WEST, data_dir=str(incarnation_dir), region_dir=str(tmp_path / WEST), mongodb_database=rebuilt
        )
        assert isinstance(node.engine, MongoEngine) and node.engine.node_id == f"{WEST}.{epoch}"
        for i in range(12):
            assert await cluster.values(WEST, "prefs_eu", f"k-{i}") == {f"v-{i}".encode()}
        await cluster.put(WEST, "prefs_eu", "after", b"restored")
        await cluster.stop_node(WEST)

        # The old database still holds the node's first store, the new one its restored one:
        # both are refused, with nothing written.
        for database in (lost, rebuilt):
            before = node_documents(mongo_server, database)
            again = tmp_path / f"again-{database}"
            assert (
                _restore(cluster, again, "--mongodb-uri", mongo_server.uri, "--mongodb-database", database)
                == 1
            )
            assert f"already holds a store of node {WEST}" in capsys.readouterr().err
            assert node_documents(mongo_server, database) == before
            assert not (again / "incarnation").exists()
    finally:
        await cluster.stop()


def node_documents(server: MongoServer, database: str) -> dict[str, int]:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(server.uri)
    try:
        db = client[database]
        return {name: db[name].count_documents({}) for name in sorted(db.list_collection_names())}
    finally:
        client.close()


async def test_a_restored_node_refuses_subject_writes_until_it_has_the_erased_list(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """Regression: a restored node learned the erased subjects only at its registration, so
    between its start and then it accepted an erased subject's writes. It now refuses every
    write about a data subject (UNAVAILABLE, retriable) until the list is stored. The node starts
    on a key store that does not know of the erasure (a new one here; a copy taken before the
    erasure is the same), so nothing but the list refuses the subject."""
    cluster = LocalCluster(tmp_path, [WEST], backups={WEST: backup_settings(s3, WEST)})
    cluster.node_overrides["backup_interval_s"] = 0.1
    await cluster.start_linked()
    try:
        await cluster.put(
            WEST, "customers_eu", "c-0", b"personal", subject_id=SUBJECT, subject_jurisdiction="IE"
        )
        async with cluster.async_client(deadline_s=5.0) as client:
            request = await client.erase_subject(SUBJECT, "the customer asked", "IE")

            async def completed() -> bool:
                return (await client.subject_request(request.request_id)).status is RequestStatus.COMPLETED

            await eventually(completed, 20.0, "the erasure completed")
        await _shipped(cluster, WEST)
        await cluster.stop_node(WEST)
        await cluster.stop_coordinator()
        restored = tmp_path / "restored"
        assert _restore(cluster, restored) == 0
        await cluster.start_node(WEST, data_dir=str(restored), region_dir=str(tmp_path / "new-key-store"))

        for subject in (SUBJECT, "cust-2"):
            with pytest.raises(grpc.aio.AioRpcError) as waiting:
                await cluster.put(
                    WEST, "customers_eu", f"w-{subject}", b"x", subject_id=subject, subject_jurisdiction="IE"
                )
            assert waiting.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "list of erased subjects" in (waiting.value.details() or "")
        assert (await cluster.get(WEST, "customers_eu", f"w-{SUBJECT}")).versions == []
        await cluster.put(WEST, "prefs_eu", "no-subject", b"accepted")

        await cluster.start_coordinator()

        async def list_arrived() -> bool:
            try:
                await cluster.put(
                    WEST, "customers_eu", "c-2", b"x", subject_id="cust-2", subject_jurisdiction="IE"
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    return False
                raise
            return True

        await eventually(list_arrived, 20.0, "the restored node received the erased-subject list")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.put(
                WEST, "customers_eu", "c-new", b"again", subject_id=SUBJECT, subject_jurisdiction="IE"
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert request.request_id in (refused.value.details() or "")
    finally:
        await cluster.stop()


# -- points between generations ------------------------------------------------------------------
#
# The shipper is driven alone on a store and a clock the test controls (no seed: nothing is
# random but the generation names' suffixes). A restore to a point must hold every write
# acknowledged before it, or refuse the point naming what it can restore.

T0 = 1_800_000_000_000
HOUR_MS = 3_600_000


class _WritesDuringSnapshot(Bucket):
    """The real bucket; when a generation's first snapshot part has gone up, `during` runs (a
    write acknowledged while the snapshot is still going up), and after every object `watch`'s
    answer is kept. With `lose_reply` set, the next segment is stored but its put fails as if
    the reply had timed out."""

    def __init__(self, spec: BackupSpec) -> None:
        super().__init__(spec)
        self.during: Callable[[], None] | None = None
        self.watch: Callable[[], int] | None = None
        self.watched: list[int] = []
        self.lose_reply = False

    def put(self, key: str, body: bytes, metadata: Mapping[str, str] | None = None) -> str:
        digest = super().put(key, body, metadata)
        if "/segments/" in key and self.lose_reply:
            self.lose_reply = False
            raise Unavailable(f"backup bucket {self.name}: put {key} failed: read timeout")
        if self.watch is not None:
            self.watched.append(self.watch())
        if "/snapshot/" in key and self.during is not None:
            during, self.during = self.during, None
            during()
        return digest


class _Store:
    """A node's store, a shipper on the session's S3 server, and the clock both read."""

    def __init__(self, tmp_path: Path, s3: SeaweedServer) -> None:
        self.now = T0
        self.spec = backup_spec(s3, WEST, generation_hours=1)
        self.engine = SQLiteEngine(str(tmp_path / "store.sqlite3"), WEST, WEST, synchronous="OFF")
        self.bucket = _WritesDuringSnapshot(self.spec)
        self.shipper = self.new_shipper()

    def new_shipper(self) -> BackupShipper:
        return BackupShipper(
            self.engine,
            self.bucket,
            self.spec,
            WEST,
            WEST,
            NodeMetrics(WEST, WEST),
            clock_ms=lambda: self.now,
        )

    def write(self, key: str, ms: int) -> None:
        (committed,) = self.engine.commit_local([LocalWrite("prefs_eu", key, b"v")], lambda: pack(ms, 0))
        assert not isinstance(committed, Exception), committed

    def catalog(self) -> Catalog:
        return Catalog(Bucket(self.spec), self.spec.prefix)

    def restored_keys(self, out: Path, to_ms: int | None) -> set[str]:
        summary = restore.restore(self.spec, WEST, WEST, out, to_ms=to_ms, progress=print)
        print(summary)
        engine = SQLiteEngine(str(out / SQLITE_FILE), f"{WEST}.{summary.epoch}", WEST)
        try:
            return {key for key, _ in engine.states_after("prefs_eu", "", 1000)}
        finally:
            engine.close()


def test_regression_a_point_before_the_new_snapshot_finished_gets_every_write_before_it(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """At a rotation the old generation's pending entries, and those written while the new
    snapshot goes up, reach the bucket before the new generation can be chosen."""
    store = _Store(tmp_path, s3)
    shipper = store.shipper
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        shipper.round()  # generation 1, snapshot finished at T0+100
        store.write("b", T0 + 200)
        shipper.round()  # a segment with b
        store.write("c", T0 + HOUR_MS)  # not shipped when the rotation is due
        store.now = T0 + HOUR_MS + 500
        store.bucket.during = lambda: store.write("d", T0 + HOUR_MS + 300)
        store.bucket.watch = shipper.truncatable_lsn
        shipper.round()  # generation 2, whose snapshot "finishes" at T0+1h+500
        keys = store.restored_keys(tmp_path / "r1", T0 + HOUR_MS + 400)
        assert keys == {"a", "b", "c", "d"}, keys
        # Generation 1 went on shipping while the snapshot went up (c before, d after its
        # part), but the log was kept from generation 2's base position (3) on meanwhile.
        first, second = store.catalog().generations(WEST)
        assert first.last_lsn == 4 and second.manifest is not None and second.manifest.base_lsn == 3
        assert max(store.bucket.watched) == 3, store.bucket.watched
        report = store.catalog().verify(WEST)
        assert report.ok, report.problems
    finally:
        store.engine.close()


def test_regression_a_node_started_after_a_crash_ships_what_its_last_generation_lacked(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    store = _Store(tmp_path, s3)
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        store.shipper.round()
        store.write("b", T0 + 200)
        store.shipper.round()
        store.write("c", T0 + 300)  # acknowledged; the node dies before the next round
        store.now = T0 + 60_000
        restarted = store.new_shipper()  # the same incarnation, on the same store
        restarted.round()
        keys = store.restored_keys(tmp_path / "r1", T0 + 30_000)
        assert keys == {"a", "b", "c"}, keys
        [first, second] = store.catalog().generations(WEST)
        assert restarted.state.generation == second.name and first.last_lsn == 3
        report = store.catalog().verify(WEST)
        assert report.ok, report.problems
    finally:
        store.engine.close()


def test_regression_a_restore_continues_with_the_next_generations_segments(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """A generation whose segments end at the next one's base position: the next one's segments
    hold what was written while its snapshot went up, before it could be chosen."""
    store = _Store(tmp_path, s3)
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        store.shipper.round()
        store.write("b", T0 + 200)
        store.shipper.round()
        # A generation started without the one before shipping on during its snapshot (as
        # buckets written by earlier versions hold): its base is the old one's end, and d is
        # only in its own segments.
        fresh = store.new_shipper()
        store.bucket.during = lambda: store.write("d", T0 + HOUR_MS + 300)
        store.now = T0 + HOUR_MS + 500
        fresh.start_generation()
        fresh.ship_pending()
        generations = store.catalog().generations(WEST)
        assert [g.last_lsn for g in generations] == [2, 3]
        keys = store.restored_keys(tmp_path / "r1", T0 + HOUR_MS + 400)
        assert keys == {"a", "b", "d"}, keys
    finally:
        store.engine.close()


def test_regression_a_point_in_a_hole_of_the_backup_is_refused_with_the_restorable_ranges(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    store = _Store(tmp_path, s3)
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        store.shipper.round()
        store.write("b", T0 + 200)
        store.shipper.round()
        # Backups stop; the log is truncated by the links alone; then they start again.
        store.write("c", T0 + 300)
        store.write("e", T0 + 400)
        store.engine.truncate_log(4, 1000)
        store.now = T0 + 60_000
        restarted = store.new_shipper()
        restarted.round()  # cannot resume: a new generation, with c and e only in its snapshot
        with pytest.raises(FailedPrecondition) as refused:
            store.restored_keys(tmp_path / "r1", T0 + 30_000)
        message = refused.value.message
        print(message)
        assert "log positions 3..4 are in no segment" in message
        assert "restorable: 2027-01-15T08:00:00.100+00:00 to 2027-01-15T08:00:00.200+00:00" in message
        assert "; from 2027-01-15T08:01:00.000+00:00 on" in message
        assert not (tmp_path / "r1" / SQLITE_FILE).exists()
        # Points the backup covers still restore, and verify reports the hole.
        assert store.restored_keys(tmp_path / "r2", T0 + 150) == {"a"}
        assert store.restored_keys(tmp_path / "r3", None) == {"a", "b", "c", "e"}
        report = store.catalog().verify(WEST)
        assert any("positions 3..4 before its base position are in no segment" in p for p in report.problems)
    finally:
        store.engine.close()


def test_regression_a_restored_store_keeps_the_point_before_which_tombstones_were_purged(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    # The bootstraps a restored node serves carry its purge point, so that their targets drop
    # what the purged tombstones deleted. A restored store started without one (0): targets
    # kept such records, and anti-entropy could bring them back.
    store = _Store(tmp_path, s3)
    try:
        store.write("gone", T0 + 10)
        (deleted,) = store.engine.commit_local(
            [LocalWrite("prefs_eu", "gone", tombstone=True)], lambda: pack(T0 + 20, 0)
        )
        assert not isinstance(deleted, Exception), deleted
        cutoff = pack(T0 + 30, 0)
        assert store.engine.purge_tombstones("prefs_eu", ["gone"], lambda _key, _state: True, cutoff) == 1
        store.write("kept", T0 + 40)
        store.now = T0 + 100
        store.shipper.round()
        [generation] = store.catalog().generations(WEST)
        assert generation.manifest is not None and generation.manifest.purged_before_hlc == cutoff
        summary = restore.restore(store.spec, WEST, WEST, tmp_path / "r", progress=print)
        restored = SQLiteEngine(str(tmp_path / "r" / SQLITE_FILE), f"{WEST}.{summary.epoch}", WEST)
        try:
            assert restored.purged_before() == cutoff
            assert restored.get("prefs_eu", "gone") is None
        finally:
            restored.close()
    finally:
        store.engine.close()


# -- overlapping segments ------------------------------------------------------------------------
#
# A segment's upload can land although its put failed (the reply lost to a timeout): the next
# round ships again from the same position, with what was written since, and the two segments
# overlap. So can the segments of a generation resumed while a shipper of it still ran.


def _segment_ranges(store: _Store) -> list[tuple[int, int]]:
    [generation] = store.catalog().generations(WEST)
    return [(s.first_lsn, s.last_lsn) for s in generation.segments]


def _retried_upload(store: _Store) -> None:
    """Positions 2..3 in a segment whose put failed after it landed, then 2..4 in its retry."""
    store.write("a", T0 + 10)
    store.now = T0 + 100
    store.shipper.round()  # base position 1
    store.write("b", T0 + 200)
    store.write("c", T0 + 300)
    store.bucket.lose_reply = True
    with pytest.raises(Unavailable, match="read timeout"):
        store.shipper.round()
    assert store.shipper.state.shipped_lsn == 1
    store.write("d", T0 + 400)
    store.shipper.round()
    assert _segment_ranges(store) == [(2, 3), (2, 4)]


def test_regression_verify_and_restore_accept_a_retried_upload_that_overlaps_a_segment(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """verify reported positions "5..2" missing when a segment started before the end of the
    one before it, although every position was in the bucket."""
    store = _Store(tmp_path, s3)
    try:
        _retried_upload(store)
        report = store.catalog().verify(WEST)
        assert report.ok, report.problems
        assert report.log_entries == 3  # each position once
        # Each position is replayed once, and the point in the middle of the overlap restores.
        summary = restore.restore(store.spec, WEST, WEST, tmp_path / "r1", progress=print)
        assert (summary.log_entries, summary.restored_lsn) == (3, 4)
        assert store.restored_keys(tmp_path / "r2", T0 + 250) == {"a", "b"}
        assert store.restored_keys(tmp_path / "r3", None) == {"a", "b", "c", "d"}
    finally:
        store.engine.close()


def test_regression_segments_of_a_resumed_generation_that_overlap_in_any_way_verify_and_restore(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    store = _Store(tmp_path, s3)
    stale = store.shipper
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        stale.round()  # base position 1
        store.write("b", T0 + 200)
        store.bucket.lose_reply = True
        with pytest.raises(Unavailable):
            stale.ship_pending()  # 2..2 landed; this shipper still stands at 1
        resumed = store.new_shipper()  # the node restarted while the old shipper ran on
        assert resumed.resume() and resumed.state.shipped_lsn == 2
        store.write("c", T0 + 300)
        resumed.ship_pending()  # 3..3
        store.write("d", T0 + 400)
        stale.ship_pending()  # 2..4: over both
        store.write("e", T0 + 500)
        resumed.ship_pending()  # 4..5: starts inside 2..4
        assert _segment_ranges(store) == [(2, 2), (2, 4), (3, 3), (4, 5)]
        [generation] = store.catalog().generations(WEST)
        assert generation.last_lsn == 5
        report = store.catalog().verify(WEST)
        assert report.ok, report.problems
        assert report.log_entries == 4
        summary = restore.restore(store.spec, WEST, WEST, tmp_path / "r1", progress=print)
        assert (summary.log_entries, summary.restored_lsn) == (4, 5)
        assert store.restored_keys(tmp_path / "r2", None) == {"a", "b", "c", "d", "e"}
    finally:
        store.engine.close()


def test_regression_overlapping_segments_that_disagree_are_reported_and_refuse_a_restore(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    store = _Store(tmp_path, s3)
    try:
        _retried_upload(store)
        [generation] = store.catalog().generations(WEST)
        shorter, longer = generation.segments
        # The shorter copy holds, at position 3, the entry of position 4: each entry is sound
        # and the object matches its sha256, but the two copies of position 3 differ.
        entries = dict(store.catalog().log_entries(longer))
        body = fmt.frame_log_entry(2, entries[2]) + fmt.frame_log_entry(3, entries[4])
        _, meta = store.bucket.get(shorter.key)
        store.bucket.put(shorter.key, body, {k: v for k, v in meta.items() if k != fmt.META_SHA256})
        disagree = (
            f"segments {shorter.key} and {longer.key} both hold log position 3 but with different entries"
        )
        report = store.catalog().verify(WEST)
        assert not report.ok
        assert [p for p in report.problems if disagree in p] == report.problems, report.problems
        with pytest.raises(DataCorruption, match=disagree):
            restore.restore(store.spec, WEST, WEST, tmp_path / "r1", progress=print)
        assert not (tmp_path / "r1" / SQLITE_FILE).exists()
        # A point before c needs neither copy of position 3, but the replay stops at it, and
        # where it stops depends on which copy is read: it is refused rather than trusting
        # either (a point before b, whose copies agree, restores: the test below).
        with pytest.raises(DataCorruption, match=disagree):
            restore.restore(store.spec, WEST, WEST, tmp_path / "r2", to_ms=T0 + 250, progress=print)
    finally:
        store.engine.close()


def _damage(store: _Store, segment: Segment, entries: list[tuple[int, bytes]]) -> None:
    """Puts other entries in a segment's object: each sound, and the object matching its sha256."""
    body = b"".join(fmt.frame_log_entry(lsn, blob) for lsn, blob in entries)
    _, meta = store.bucket.get(segment.key)
    store.bucket.put(segment.key, body, {k: v for k, v in meta.items() if k != fmt.META_SHA256})


def test_regression_verify_compares_the_copies_of_a_position_in_two_generations(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """verify compared the copies of a position only within one generation, but the generations
    of one incarnation copy one change log: at a rotation the old generation ships what is
    written while the new snapshot goes up, and the new one ships it too. Two generations
    holding different entries at one position verified, and a restore from the older one then
    replayed its copy unchecked."""
    store = _Store(tmp_path, s3)
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        store.shipper.round()  # generation 1, base position 1
        store.write("b", T0 + 200)
        store.shipper.round()
        store.write("c", T0 + HOUR_MS)
        store.now = T0 + HOUR_MS + 500
        store.bucket.during = lambda: store.write("d", T0 + HOUR_MS + 300)
        store.shipper.round()  # generation 2, base position 3; d (position 4) is in both
        store.write("e", T0 + HOUR_MS + 600)
        store.now = T0 + HOUR_MS + 700
        store.shipper.round()
        first, second = store.catalog().generations(WEST)
        assert [(s.first_lsn, s.last_lsn) for s in first.segments] == [(2, 2), (3, 3), (4, 4)]
        assert [(s.first_lsn, s.last_lsn) for s in second.segments] == [(4, 4), (5, 5)]
        assert store.catalog().verify(WEST).ok
        # The older generation's copy of position 4 holds the entry of position 3.
        [(_, entry_3)] = store.catalog().log_entries(first.segments[1])
        _damage(store, first.segments[2], [(4, entry_3)])
        report = store.catalog().verify(WEST)
        disagree = (
            f"segments {first.segments[2].key} and {second.segments[0].key} both hold log position 4 "
            "but with different entries"
        )
        assert not report.ok
        assert [p for p in report.problems if disagree in p] == report.problems, report.problems
        assert report.log_entries == 4  # positions 2..5, each once
    finally:
        store.engine.close()


def test_regression_a_point_before_a_damaged_copy_of_a_later_write_restores(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """A point-in-time restore compared overlapping copies over whole segments, past the
    position it stops at: a damaged copy of a write after the point refused the restore of a
    point that needs neither copy."""
    store = _Store(tmp_path, s3)
    try:
        _retried_upload(store)  # a (snapshot), then b, c, d at positions 2, 3, 4
        [generation] = store.catalog().generations(WEST)
        shorter, longer = generation.segments
        entries = dict(store.catalog().log_entries(longer))
        _damage(store, shorter, [(2, entries[2]), (3, entries[4])])
        disagree = (
            f"segments {shorter.key} and {longer.key} both hold log position 3 but with different entries"
        )
        # Before b (position 2, the first replayed): the replay stops at 2, both copies of
        # which agree.
        assert store.restored_keys(tmp_path / "r1", T0 + 150) == {"a"}
        # Past b, the replay stops at position 3 or takes it: it is refused, as is verify.
        for out, to_ms in (("r2", T0 + 250), ("r3", None)):
            with pytest.raises(DataCorruption, match=disagree):
                restore.restore(store.spec, WEST, WEST, tmp_path / out, to_ms=to_ms, progress=print)
            assert not (tmp_path / out / SQLITE_FILE).exists()
        assert any(disagree in p for p in store.catalog().verify(WEST).problems)
    finally:
        store.engine.close()


def test_regression_a_point_compares_a_later_generations_copy_of_the_position_it_stops_at(
    tmp_path: Path, s3: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay stopped reading segments at the first one starting past the position it stops
    at, but a chain's segments are in generation order, not by first position: a later
    generation's segment starting before it was never read, so a damaged copy of the position
    the replay stops at restored silently instead of being refused."""
    store = _Store(tmp_path, s3)
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        store.shipper.round()  # generation 1, base position 1
        monkeypatch.setattr(shipper_module, "SEGMENT_ENTRIES_MAX", 1)

        def written_during_the_snapshot() -> None:
            for i, key in enumerate("bcd"):
                store.write(key, T0 + HOUR_MS + 300 + 10 * i)

        store.bucket.during = written_during_the_snapshot
        store.now = T0 + HOUR_MS + 500
        store.shipper.start_generation()  # base position 1; generation 1 ships 2, 3, 4 one by one
        monkeypatch.setattr(shipper_module, "SEGMENT_ENTRIES_MAX", 10_000)
        store.write("e", T0 + HOUR_MS + 600)
        store.now = T0 + HOUR_MS + 700
        store.shipper.round()
        first, second = store.catalog().generations(WEST)
        assert [(s.first_lsn, s.last_lsn) for s in first.segments] == [(2, 2), (3, 3), (4, 4)]
        # The new generation ships its own copies from its base before its manifest (one entry a
        # segment while the snapshot goes up), then what follows.
        assert [(s.first_lsn, s.last_lsn) for s in second.segments] == [(2, 2), (3, 3), (4, 4), (5, 5)]
        to_ms = T0 + HOUR_MS + 305  # after b (position 2), before c: the replay stops at 3
        assert store.restored_keys(tmp_path / "r0", to_ms) == {"a", "b"}
        # Generation 1's copy of position 2 holds the entry of position 3.
        [(_, entry_c)] = store.catalog().log_entries(first.segments[1])
        _damage(store, first.segments[0], [(2, entry_c)])
        disagree = (
            f"segments {first.segments[0].key} and {second.segments[0].key} both hold log position 2 "
            "but with different entries"
        )
        assert any(disagree in p for p in store.catalog().verify(WEST).problems)
        with pytest.raises(DataCorruption, match=disagree):
            store.restored_keys(tmp_path / "r1", to_ms)
        assert not (tmp_path / "r1" / SQLITE_FILE).exists()
    finally:
        store.engine.close()


def test_regression_copies_that_differ_after_an_unnoticed_rewind_are_not_called_damaged_alone(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """A store put back from an older copy under the same incarnation, without the rewind check
    noticing (its blind spots: README), writes positions its backup already holds again, with
    other entries: nothing is damaged, but verify said that one copy was and which one could not
    be told. It names both causes."""
    store = _Store(tmp_path, s3)
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        store.shipper.round()  # generation 1, base position 1
        store.write("b", T0 + 200)
        store.shipper.round()
        store.engine.close()
        copy = tmp_path / "copy"
        copy.mkdir()
        for file in tmp_path.glob("store.sqlite3*"):
            shutil.copy(file, copy / file.name)
        store.engine = SQLiteEngine(str(tmp_path / "store.sqlite3"), WEST, WEST, synchronous="OFF")
        store.shipper = store.new_shipper()
        store.write("c", T0 + 300)  # position 3
        store.now = T0 + 400
        store.shipper.round()  # generation 2; the first ships c
        store.engine.close()
        for file in tmp_path.glob("store.sqlite3*"):
            file.unlink()
        for file in copy.iterdir():
            shutil.copy(file, tmp_path / file.name)  # back to position 2, the same incarnation
        store.engine = SQLiteEngine(str(tmp_path / "store.sqlite3"), WEST, WEST, synchronous="OFF")
        store.shipper = store.new_shipper()
        store.now = T0 + 500
        store.shipper.round()  # generation 3 (the second cannot be resumed), base position 2
        store.write("d", T0 + 600)  # position 3 again
        store.shipper.round()
        first, _, third = store.catalog().generations(WEST)
        assert [(s.first_lsn, s.last_lsn) for g in (first, third) for s in g.segments] == [
            (2, 2),
            (3, 3),
            (3, 3),
        ]
        assert third.manifest is not None and third.manifest.base_lsn == 2
        report = store.catalog().verify(WEST)
        disagree = (
            f"segments {first.segments[1].key} and {third.segments[0].key} both hold log position 3 "
            "but with different entries: either one copy is damaged, or the node's store was put "
            "back from an older copy under the same incarnation without the rewind check noticing"
        )
        assert [p for p in report.problems if disagree in p] == report.problems != [], report.problems
    finally:
        store.engine.close()


class _ListingFailsAfterManifest(_WritesDuringSnapshot):
    """The real bucket; once a manifest has been stored, the next listing fails once (a
    transient S3 error, e.g. a 503 SlowDown)."""

    def __init__(self, spec: BackupSpec) -> None:
        super().__init__(spec)
        self.fail_next_listing = False

    def put(self, key: str, body: bytes, metadata: Mapping[str, str] | None = None) -> str:
        digest = super().put(key, body, metadata)
        if key.endswith("/manifest.json") and self.arm:
            self.fail_next_listing = True
        return digest

    arm = False

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        if self.fail_next_listing:
            self.fail_next_listing = False
            raise Unavailable(f"backup bucket {self.name}: list {prefix} failed: SlowDown")
        return super().objects(prefix)


def test_a_new_generation_holds_the_writes_of_its_snapshot_before_its_manifest(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """Regression: writes made while a new snapshot went up were shipped into the old
    generation, and the new generation's manifest went up before any segment of its own. A
    restore to the newest write chooses the new generation and reads no earlier one's segments,
    so a node lost before that first segment (here the round's expiry fails, then the node is
    gone) restored without writes the bucket held, with no error."""
    store = _Store(tmp_path, s3)
    store.bucket = _ListingFailsAfterManifest(store.spec)
    store.shipper = store.new_shipper()
    shipper = store.shipper
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        shipper.round()  # generation 1
        store.write("b", T0 + 200)
        shipper.round()  # a segment with b
        # Rotation due; d is written while the new snapshot goes up (after its first part).
        store.now = T0 + HOUR_MS + 500
        store.bucket.during = lambda: store.write("d", T0 + HOUR_MS + 300)
        store.bucket.arm = True
        with pytest.raises(Unavailable):
            shipper.round()  # G2's manifest is stored, then expiry's listing fails
        # The node is lost now. d (position 3) is in both generations.
        first, second = store.catalog().generations(WEST)
        assert second.manifest is not None and second.manifest.base_lsn == 2
        assert first.last_lsn == 3 and second.last_lsn == 3
        assert store.catalog().verify(WEST).ok
        keys = store.restored_keys(tmp_path / "r-newest", None)
        assert "d" in keys, f"restore to newest lost the backed-up write d: {keys}"
    finally:
        store.engine.close()


def test_restore_refuses_a_backup_whose_manifest_names_another_region(
    tmp_path: Path, s3: SeaweedServer
) -> None:
    """Regression: a node of one region restored with the --region of another (two regions may
    share a bucket and its prefix) was rebuilt as a store of the other region, its records now
    held and served there. The manifest names the region; restore now refuses the mismatch."""
    store = _Store(tmp_path, s3)
    try:
        store.write("a", T0 + 10)
        store.now = T0 + 100
        store.shipper.round()
        [generation] = store.catalog().generations(WEST)
        assert generation.manifest is not None and generation.manifest.region == WEST
        with pytest.raises(FailedPrecondition, match=f"backup of node {WEST} in region {WEST}"):
            restore.restore(store.spec, WEST, "eu-central-1", tmp_path / "r")
        assert not (tmp_path / "r" / SQLITE_FILE).exists()
        # Negative control: as the region it came from, it restores.
        assert "a" in store.restored_keys(tmp_path / "r-west", None)
    finally:
        store.engine.close()
