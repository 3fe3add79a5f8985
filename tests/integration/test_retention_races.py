"""A retention sweep judges a record expired from the state it read, then audits the expiry and
writes the tombstone: a write or a legal hold that lands in between must keep the record (the
tombstone's precondition, checked on the writer thread). The same race in a siblings namespace
is tests/integration/test_subject_rights.py's."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

from domicile.audit import AuditEntry
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import subject_pb2 as subpb
from tests.integration import test_subject_rights as subject_rights
from tests.integration.test_subject_rights import DAY_MS, coordinator, put
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack

# The subject-rights tests' namespaces, and one in lww mode with the same retention.
NAMESPACES = [
    *subject_rights.NAMESPACES,
    {
        "name": "sessions_lww",
        "regions": "global",
        "classification": "personal",
        "retention_class": "cache",
        "conflict_mode": "lww",
    },
]


async def _race(cluster: LocalCluster, entry: Any, namespace: str) -> int:
    seq = int(await entry)
    # A client write that lands between the sweep's scan and its tombstone.
    await put(cluster, "eu-west-1", namespace, "live-1", "s-ivy", b"fresh token")
    return seq


async def _sweep_with_a_racing_write(tmp_path: Path, namespace: str) -> set[bytes]:
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        node = cluster.nodes["eu-west-1"]
        await put(cluster, "eu-west-1", namespace, "live-1", "s-ivy", b"old token")
        record = node.sweeper.audit.record
        raced: list[bool] = []

        def record_then_race(**fields: Any) -> Any:
            entry = record(**fields)
            if fields.get("action") == "expire" and not raced:
                raced.append(True)
                return asyncio.ensure_future(_race(cluster, entry, namespace))
            return entry

        node.sweeper.audit = types.SimpleNamespace(record=record_then_race)
        report = await node.sweep_retention(node.wall_ms() + 2 * DAY_MS)
        assert raced and dict(report.spared) == {namespace: 1} and not report.expired
        return await cluster.values("eu-west-1", namespace, "live-1")
    finally:
        await cluster.stop()


async def test_lww_retention_spares_a_write_that_lands_during_the_sweep(tmp_path: Path) -> None:
    """Regression: in an lww namespace the sweep's tombstone, stamped after the racing write,
    won by its HLC although it superseded only what the sweep had judged: an acknowledged write
    disappeared."""
    assert await _sweep_with_a_racing_write(tmp_path, "sessions_lww") == {b"fresh token"}


async def test_retention_spares_a_record_whose_hold_is_placed_while_its_expiry_is_audited(
    tmp_path: Path,
) -> None:
    """Regression: the holds were read before the expiry's audit entry was written and not
    again, so a hold in force before the tombstone committed did not stop it."""
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        node = cluster.nodes["eu-west-1"]
        await put(cluster, "eu-west-1", "sessions", "held-1", "s-jay", b"evidence")
        record = node.sweeper.audit.record
        placed: list[bool] = []

        async def hold_meanwhile(entry: Any) -> int:
            seq = int(await entry)
            # A DPO places a hold on the subject while the expiry's audit entry is written; the
            # node adopts it before the sweep's tombstone is committed.
            await coordinator(cluster).PlaceLegalHold(
                cpb.PlaceLegalHoldRequest(
                    scope=subpb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="s-jay", reason="litigation 9"
                ),
                timeout=5,
            )

            async def adopted() -> bool:
                return len(node.view.topology.holds) == 1

            await eventually(adopted, 10.0, "the hold at eu-west-1")
            placed.append(True)
            return seq

        def record_then_hold(**fields: Any) -> Any:
            entry = record(**fields)
            if fields.get("action") == "expire" and not placed:
                return asyncio.ensure_future(hold_meanwhile(entry))
            return entry

        node.sweeper.audit = types.SimpleNamespace(record=record_then_hold)
        report = await node.sweep_retention(node.wall_ms() + 2 * DAY_MS)
        assert placed and len(node.view.topology.holds) == 1 and dict(report.spared) == {"sessions": 1}
        # The trail says the expiry was decided and not carried out.
        await node.audit.flush()
        spared = [
            e
            for e in (AuditEntry.decode(x.body) for x in node.audit.iter_all())
            if e.action == "expire" and e.key == "held-1"
        ]
        assert [e.decision for e in spared] == ["expire", "keep"] and "legal hold" in spared[1].detail
        # The hold was in force before the tombstone was written: "A hold stops expiry".
        assert await cluster.values("eu-west-1", "sessions", "held-1") == {b"evidence"}
    finally:
        await cluster.stop()


async def test_an_untouched_expired_record_is_still_expired(tmp_path: Path) -> None:
    """Negative control for the precondition: nothing lands in between, the record expires."""
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        node = cluster.nodes["eu-west-1"]
        await put(cluster, "eu-west-1", "sessions_lww", "old-1", "s-ivy", b"old token")
        report = await node.sweep_retention(node.wall_ms() + 2 * DAY_MS)
        assert dict(report.expired) == {"sessions_lww": 1} and not report.spared
        assert await cluster.values("eu-west-1", "sessions_lww", "old-1") == set()
    finally:
        await cluster.stop()
