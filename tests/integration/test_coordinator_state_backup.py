"""The coordinator's state in its region's bucket (a real S3 server): killed, its data
directory gone, restored, every hold, request, receipt and audit-head pin is back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coordinator.__main__ import main as coordinator_main
from domicile.s3_server import SeaweedServer
from domicile.subjects import HoldScope, RequestStatus
from tests.support.cluster import LocalCluster, eventually
from tests.support.s3 import backup_settings

WEST = "eu-west-1"


async def test_a_coordinator_restored_from_its_bucket_has_every_hold_request_and_receipt(
    tmp_path: Path, s3: SeaweedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = LocalCluster(tmp_path, [WEST], backups={WEST: backup_settings(s3, WEST)})
    cluster.coordinator_overrides.update(region=WEST, state_backup_interval_s=0.1)
    await cluster.start_linked()
    try:
        await cluster.put(WEST, "customers_eu", "c-1", b"x", subject_id="cust-1", subject_jurisdiction="IE")
        async with cluster.async_client(deadline_s=5.0) as client:
            hold = await client.place_hold(HoldScope.NAMESPACE, namespace="prefs_eu", reason="case 17")
            erasure = await client.erase_subject("cust-1", "asked", "IE")

            async def completed() -> bool:
                return (await client.subject_request(erasure.request_id)).status is RequestStatus.COMPLETED

            await eventually(completed, 20.0, "the erasure completed")
            access = await client.open_access_request("cust-2", "portal", "IE")
            before = {r.request_id: r for r in await client.subject_requests()}
            holds_before = await client.holds()
        coordinator = cluster.coordinator
        assert coordinator is not None and coordinator.state_backup is not None
        heads_before = coordinator._store.load_audit_heads()
        backup = coordinator.state_backup

        async def shipped() -> bool:
            return bool(backup.last_key) and backup._shipped_changes == coordinator._store.changes()

        await eventually(shipped, 20.0, "the coordinator state shipped after the last change")
        # Killed: no last copy at stop, and its data directory is gone.
        coordinator.state_backup = None
        await cluster.stop_coordinator()
        shutil.rmtree(tmp_path / "coordinator")
        args = ["--cluster-config", str(cluster.config_path), "--region", WEST]
        assert coordinator_main(["restore", *args, "--data-dir", str(tmp_path / "coordinator")]) == 0
        assert "restored the coordinator state from" in capsys.readouterr().out
        assert coordinator_main(["restore", *args, "--data-dir", str(tmp_path / "coordinator")]) == 1
        assert "already holds a coordinator state" in capsys.readouterr().err
        await cluster.start_coordinator()
        async with cluster.async_client(deadline_s=5.0) as client:
            after = {r.request_id: r for r in await client.subject_requests()}
            assert after == before
            assert (
                after[erasure.request_id].receipts and after[access.request_id].status is RequestStatus.OPEN
            )
            assert await client.holds() == holds_before and holds_before[0].hold_id == hold.hold_id
        assert cluster.coordinator is not None
        # The pins are back (the node may have exported a newer head since, never an older one).
        heads_after = cluster.coordinator._store.load_audit_heads()
        assert heads_after.keys() == heads_before.keys()
        assert all(heads_after[r][1] >= heads_before[r][1] for r in heads_before)
    finally:
        await cluster.stop()
