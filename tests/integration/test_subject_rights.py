"""Data-subject rights end to end: erasure across regions (with a partition and concurrent
writes in the cut-off region), crypto-shredding of old database copies, export across
regions, retention with and without legal holds."""

from __future__ import annotations

import asyncio
import sqlite3
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from domicile.audit import AuditEntry
from domicile.subjects import RequestStatus, SubjectRequest
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import subject_pb2 as subpb
from domicile.wire.subjects import request_from_pb
from node.crypto.sealing import KEY_CLASS_TAG, Sealer, sealed_key_class
from node.engine.sqlite import SQLiteEngine
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack
from tests.support.tcp_proxy import TcpProxy

NAMESPACES = [
    {"name": "customers", "regions": "global", "classification": "personal", "retention_class": "user_data"},
    {
        "name": "trades",
        "regions": "global",
        "classification": "financial",
        "retention_class": "transaction_data",
    },
    {"name": "sessions", "regions": "global", "classification": "personal", "retention_class": "cache"},
]
EU = ["eu-west-1", "eu-central-1"]
DAY_MS = 86_400_000


def coordinator(cluster: LocalCluster) -> cpb_grpc.CoordinatorServiceStub:
    return cpb_grpc.CoordinatorServiceStub(cluster.coordinator_channel())


async def erase(cluster: LocalCluster, subject: str, reason: str = "Art. 17 request") -> SubjectRequest:
    response = await coordinator(cluster).EraseSubject(
        cpb.EraseSubjectRequest(subject_id=subject, reason=reason, subject_jurisdiction="DE"), timeout=5
    )
    return request_from_pb(response.request)


async def request(cluster: LocalCluster, request_id: str) -> SubjectRequest:
    response = await coordinator(cluster).GetSubjectRequest(
        cpb.GetSubjectRequestRequest(request_id=request_id), timeout=5
    )
    return request_from_pb(response.request)


async def completed(cluster: LocalCluster, request_id: str, timeout_s: float = 20.0) -> SubjectRequest:
    async def done() -> bool:
        return (await request(cluster, request_id)).status is RequestStatus.COMPLETED

    await eventually(done, timeout_s, f"request {request_id} completed")
    return await request(cluster, request_id)


async def put(
    cluster: LocalCluster, region: str, namespace: str, key: str, subject: str, value: bytes, **kw: Any
) -> spb.PutResponse:
    return await cluster.put(
        region, namespace, key, value, subject_id=subject, subject_jurisdiction="DE", **kw
    )


def live(cluster: LocalCluster, region: str, namespace: str, key: str) -> bool:
    state = cluster.nodes[region].engine.get(namespace, key)
    return state is not None and state.has_live()


async def replicated(cluster: LocalCluster, regions: list[str], namespace: str, key: str) -> None:
    for region in regions:

        async def there(r: str = region) -> bool:
            return live(cluster, r, namespace, key)

        await eventually(there, 15.0, f"{namespace}/{key} at {region}")


@pytest.fixture
async def eu_us(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(
        tmp_path, ["eu-west-1", "eu-central-1", "us-east-1"], pack=sample_pack(), namespaces=NAMESPACES
    )
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_an_erasure_reaches_every_region_keeps_what_the_law_keeps_and_leaves_a_receipt(
    eu_us: LocalCluster,
) -> None:
    await put(eu_us, "eu-west-1", "customers", "anna", "s-anna", b"Anna, Berlin")
    await put(eu_us, "eu-central-1", "sessions", "anna-web", "s-anna", b"session token")
    await put(eu_us, "eu-west-1", "trades", "t-1", "s-anna", b"BUY 100 SAP")
    await put(eu_us, "eu-west-1", "customers", "bob", "s-bob", b"Bob, Paris")
    everywhere = ["eu-west-1", "eu-central-1", "us-east-1"]  # us-east-1 is DPF-certified
    for ns, key in (("customers", "anna"), ("sessions", "anna-web"), ("trades", "t-1"), ("customers", "bob")):
        await replicated(eu_us, everywhere, ns, key)

    opened = await erase(eu_us, "s-anna")
    assert opened.status is RequestStatus.OPEN and set(opened.regions_pending) >= set(everywhere)
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await erase(eu_us, "s-anna")
    assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS and opened.request_id in (
        twice.value.details() or ""
    )

    done = await completed(eu_us, opened.request_id)
    assert done.completed_ms >= done.received_ms and done.due_ms > done.received_ms
    for region in everywhere:
        assert not live(eu_us, region, "customers", "anna"), region
        assert not live(eu_us, region, "sessions", "anna-web"), region
        assert live(eu_us, region, "trades", "t-1"), region  # MiFID II: kept
        assert live(eu_us, region, "customers", "bob"), region  # another subject
        trade = await eu_us.get(region, "trades", "t-1")
        assert trade.versions[0].value == b"BUY 100 SAP"  # still readable: its key was kept
    receipts = {r.region: r for r in done.receipts}
    for region in everywhere:
        receipt = receipts[region]
        assert dict(receipt.erased) == {"customers": 1, "sessions": 1}
        assert [(k.namespace, k.key) for k in receipt.kept] == [("trades", "t-1")]
        assert "MiFID II" in receipt.kept[0].reason and "17(3)(b)" in receipt.kept[0].reason
        assert receipt.keys_destroyed == 2  # user_data and cache; transaction_data kept
        node = eu_us.nodes[region]
        entry = AuditEntry.decode(node.audit.read(receipt.audit_seq - 1, 1)[0].body)
        assert entry.action == "erasure_receipt" and opened.request_id in entry.detail
    # The subject stays erased: a new record about them is refused.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await put(eu_us, "eu-west-1", "customers", "anna-2", "s-anna", b"back?")
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert opened.request_id in (again.value.details() or "")


async def test_an_erasure_completes_after_a_partition_and_nothing_comes_back(tmp_path: Path) -> None:
    cut_region = "eu-central-1"
    cluster = LocalCluster(
        tmp_path,
        ["eu-west-1", cut_region, "us-east-1"],
        proxies=True,
        pack=sample_pack(),
        namespaces=NAMESPACES,
    )
    await cluster.start_coordinator()
    control = TcpProxy(cluster.coordinator_address)
    await control.start()
    try:
        for region in cluster.regions:
            proxy = TcpProxy(f"127.0.0.1:{cluster.ports[region]}")
            await proxy.start()
            cluster.proxies[region] = proxy
            extra = {"coordinator": control.address} if region == cut_region else {}
            await cluster.start_node(region, **extra)
        await cluster.wait_linked()
        await put(cluster, "eu-west-1", "customers", "carl", "s-carl", b"Carl v1")
        await replicated(cluster, ["eu-west-1", cut_region, "us-east-1"], "customers", "carl")

        # Cut eu-central-1 off from everyone, the coordinator included.
        control.partition()
        for proxy in cluster.proxies.values():
            proxy.partition()
        opened = await erase(cluster, "s-carl")

        async def others_done() -> bool:
            return (await request(cluster, opened.request_id)).regions_pending == (cut_region,)

        await eventually(others_done, 20.0, "every region but the cut-off one erased")
        assert (await request(cluster, opened.request_id)).status is RequestStatus.OPEN
        # Meanwhile, in the cut-off region: an update and a new record of the same subject.
        held = cluster.nodes[cut_region].engine.get("customers", "carl")
        assert held is not None
        await put(
            cluster, cut_region, "customers", "carl", "s-carl", b"Carl v2 (concurrent)", context=held.context
        )
        await put(cluster, cut_region, "customers", "carl-new", "s-carl", b"new while cut off")
        assert live(cluster, cut_region, "customers", "carl-new")

        # The network heals first, the coordinator link last: the cut-off region ships its new
        # writes before it hears of the erasure, and the regions that erased refuse them.
        for proxy in cluster.proxies.values():
            proxy.heal()
        west = cluster.nodes["eu-west-1"]

        async def refused_on_arrival() -> bool:
            await west.audit.flush()
            entries = [AuditEntry.decode(e.body) for e in west.audit.iter_all()]
            return {e.key for e in entries if e.rule == "subject-erased"} >= {"carl", "carl-new"}

        await eventually(refused_on_arrival, 20.0, "the cut-off region's writes refused on arrival")
        assert not live(cluster, "eu-west-1", "customers", "carl-new")
        control.heal()
        done = await completed(cluster, opened.request_id, 30.0)
        assert {r.region for r in done.receipts} == {"eu-west-1", cut_region, "us-east-1"}

        async def settled() -> bool:
            for node in cluster.nodes.values():
                last = node.engine.last_lsn()
                if any(s.acked_lsn < last or not s.connected for s in node.replication.senders.values()):
                    return False
            return True

        await eventually(settled, 30.0, "replication caught up after the heal")
        for region in cluster.regions:
            for key in ("carl", "carl-new"):
                assert not live(cluster, region, "customers", key), (region, key)
    finally:
        await cluster.stop()
        await control.stop()


async def test_regression_a_region_the_tombstone_reaches_before_its_order_counts_the_record_erased(
    tmp_path: Path,
) -> None:
    # eu-central-1 hears of the erasure only after eu-west-1's tombstone reached it by
    # replication: its receipt once counted nothing, though it held the record until then.
    late = "eu-central-1"
    cluster = LocalCluster(tmp_path, EU, pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_coordinator()
    control = TcpProxy(cluster.coordinator_address)
    await control.start()
    try:
        for region in EU:
            await cluster.start_node(region, **({"coordinator": control.address} if region == late else {}))
        await cluster.wait_linked()
        await put(cluster, "eu-west-1", "customers", "erin", "s-erin", b"Erin, Munich")
        await replicated(cluster, EU, "customers", "erin")

        control.partition()
        opened = await erase(cluster, "s-erin")

        async def tombstone_arrived() -> bool:
            return not live(cluster, late, "customers", "erin")

        await eventually(tombstone_arrived, 20.0, f"eu-west-1's tombstone at {late}")
        assert late in (await request(cluster, opened.request_id)).regions_pending
        control.heal()
        done = await completed(cluster, opened.request_id, 30.0)
        receipts = {r.region: r for r in done.receipts}
        assert dict(receipts["eu-west-1"].erased) == {"customers": 1}
        assert dict(receipts[late].erased) == {"customers": 1}
    finally:
        await cluster.stop()
        await control.stop()


async def test_a_database_copy_taken_before_an_erasure_yields_no_readable_value(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        node = cluster.nodes["eu-west-1"]
        secret = b"Dora's private address: Hauptstrasse 1"
        await put(cluster, "eu-west-1", "customers", "dora", "s-dora", secret)
        await put(cluster, "eu-west-1", "trades", "t-9", "s-dora", b"SELL 5 BMW")
        data_dir = Path(node.config.data_dir)
        copy = tmp_path / "copy" / "store.sqlite3"
        copy.parent.mkdir()
        with sqlite3.connect(data_dir / "store.sqlite3") as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        assert secret not in copy.read_bytes()  # encrypted at rest from the start

        done = await completed(cluster, (await erase(cluster, "s-dora")).request_id)
        assert done.receipts[0].keys_destroyed == 1

        # The old copy with this node's key store: the erased value cannot be opened, the kept one can.
        old = SQLiteEngine(str(copy), "eu-west-1", "eu-west-1")
        try:
            sealer = Sealer(node.keyring)
            (customer,) = old.get("customers", "dora").live()
            assert sealed_key_class(customer.value) == "user_data"
            assert sealer.open_version("customers", "dora", customer) is None
            (trade,) = old.get("trades", "t-9").live()
            assert sealed_key_class(trade.value) == "transaction_data"
            opened = sealer.open_version("trades", "t-9", trade)
            assert opened is not None and opened.value == b"SELL 5 BMW"
        finally:
            old.close()
        # And the key store keeps no trace of the destroyed key.
        for path in (data_dir / "keys").glob("keys.sqlite3*"):
            assert b"s-dora\\x00user_data" not in path.read_bytes()
    finally:
        await cluster.stop()


async def test_an_export_gathers_every_region_with_retention_and_basis(eu_us: LocalCluster) -> None:
    await put(eu_us, "eu-west-1", "customers", "erik", "s-erik", b"Erik, Stockholm")
    await put(eu_us, "eu-central-1", "trades", "t-7", "s-erik", b"BUY 1 ERIC")
    await put(eu_us, "eu-west-1", "customers", "other", "s-other", b"someone else")
    everywhere = ["eu-west-1", "eu-central-1", "us-east-1"]
    await replicated(eu_us, everywhere, "customers", "erik")
    await replicated(eu_us, everywhere, "trades", "t-7")
    copies: dict[tuple[str, str], set[str]] = {}
    for region in everywhere:
        async for response in eu_us.stub(region).ExportSubject(
            spb.ExportSubjectRequest(subject_id="s-erik"), timeout=5
        ):
            for record in response.records:
                copies.setdefault((record.namespace, record.key), set()).add(record.region)
                assert record.legal_basis, record
                assert [v.value for v in record.versions] in ([b"Erik, Stockholm"], [b"BUY 1 ERIC"])
                if record.namespace == "trades":
                    assert record.retention_class == "transaction_data"
                    assert record.retention_period_seconds == 3 * 365 * 86_400
    assert copies == {("customers", "erik"): set(everywhere), ("trades", "t-7"): set(everywhere)}
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        async for _ in eu_us.stub("eu-west-1").ExportSubject(
            spb.ExportSubjectRequest(subject_id=""), timeout=5
        ):
            pass
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_retention_expires_records_unless_a_hold_keeps_them(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, EU, pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        await cluster.wait_linked()
        for key in ("w-1", "w-2"):
            await put(cluster, "eu-west-1", "sessions", key, f"s-{key}", b"token")
        await replicated(cluster, EU, "sessions", "w-2")
        placed = await coordinator(cluster).PlaceLegalHold(
            cpb.PlaceLegalHoldRequest(
                scope=subpb.LEGAL_HOLD_SCOPE_KEY, namespace="sessions", key="w-2", reason="case 42"
            ),
            timeout=5,
        )
        node = cluster.nodes["eu-west-1"]

        async def adopted() -> bool:
            return all(len(n.view.topology.holds) == 1 for n in cluster.nodes.values())

        await eventually(adopted, 10.0, "the hold in every region")
        now = node.wall_ms()
        early = await node.sweep_retention(now + 3_600_000)  # an hour: cache keeps 24 hours
        assert not early.expired
        later = await node.sweep_retention(now + 2 * DAY_MS)
        assert dict(later.expired) == {"sessions": 1} and dict(later.held) == {"sessions": 1}
        assert not live(cluster, "eu-west-1", "sessions", "w-1") and live(
            cluster, "eu-west-1", "sessions", "w-2"
        )

        async def tombstone_replicated() -> bool:
            return not live(cluster, "eu-central-1", "sessions", "w-1")

        await eventually(tombstone_replicated, 10.0, "the expiry tombstone at eu-central-1")
        await coordinator(cluster).ReleaseLegalHold(
            cpb.ReleaseLegalHoldRequest(hold_id=placed.hold.hold_id, reason="case closed"), timeout=5
        )

        async def released() -> bool:
            return not node.view.topology.holds

        await eventually(released, 10.0, "the release in eu-west-1")
        final = await node.sweep_retention(now + 2 * DAY_MS)
        assert dict(final.expired) == {"sessions": 1}
        assert not live(cluster, "eu-west-1", "sessions", "w-2")
        await node.audit.flush()
        actions = [AuditEntry.decode(e.body).action for e in node.audit.iter_all()]
        assert "hold_placed" in actions and "hold_released" in actions and actions.count("expire") == 2
    finally:
        await cluster.stop()


async def test_regression_retention_keeps_a_key_whose_sibling_is_about_a_held_subject(tmp_path: Path) -> None:
    # Two concurrent writes about two people leave two siblings; the expiry tombstone would
    # supersede both, so a hold on either subject keeps the key (it deleted the held one).
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        node = cluster.nodes["eu-west-1"]
        await put(cluster, "eu-west-1", "sessions", "k", "s-other", b"other value")
        await put(cluster, "eu-west-1", "sessions", "k", "s-held", b"held value")  # no context
        await put(cluster, "eu-west-1", "sessions", "unheld", "s-other", b"other value")
        state = node.engine.get("sessions", "k")
        assert state is not None and len(state.live()) == 2
        await coordinator(cluster).PlaceLegalHold(
            cpb.PlaceLegalHoldRequest(
                scope=subpb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="s-other", reason="litigation"
            ),
            timeout=5,
        )

        async def adopted() -> bool:
            return len(node.view.topology.holds) == 1

        await eventually(adopted, 10.0, "the hold at eu-west-1")
        report = await node.sweep_retention(node.wall_ms() + 2 * DAY_MS)
        # Both keys hold a version about s-other; the held subject's sibling is not the newest.
        assert dict(report.held) == {"sessions": 2} and not report.expired
        assert set(await cluster.values("eu-west-1", "sessions", "k")) == {b"other value", b"held value"}
    finally:
        await cluster.stop()


async def test_regression_a_held_record_a_region_cannot_seal_is_refused_alone_not_its_batch(
    tmp_path: Path,
) -> None:
    # eu-central-1 erases s-x (destroying its key there) while eu-west-1, which holds a record
    # of s-x eu-central-1 never saw, is down; then a hold on s-x is placed. When eu-west-1
    # returns, the held record may not be sealed at eu-central-1 (a destroyed key is never
    # created again): it is refused there alone. It failed the whole batch, every time, and
    # replication between the two regions stopped for every namespace.
    public = {"name": "instruments", "regions": "global", "conflict_mode": "lww", "classification": "public"}
    cluster = LocalCluster(tmp_path, EU, pack=sample_pack(), namespaces=[*NAMESPACES, public])
    await cluster.start()
    try:
        await cluster.wait_linked()
        await put(cluster, "eu-west-1", "customers", "k1", "s-x", b"one")
        await replicated(cluster, ["eu-central-1"], "customers", "k1")
        await cluster.stop_node("eu-central-1")
        await put(cluster, "eu-west-1", "customers", "k2", "s-x", b"two")
        await cluster.stop_node("eu-west-1")
        await cluster.start_node("eu-central-1")
        central = cluster.nodes["eu-central-1"]
        order = await erase(cluster, "s-x")

        async def erased_at_central() -> bool:
            return central.eraser.completed_total >= 1 and not central.keyring.key_classes("s-x")

        await eventually(erased_at_central, 20.0, f"erasure {order.request_id} at eu-central-1")
        await coordinator(cluster).PlaceLegalHold(
            cpb.PlaceLegalHoldRequest(
                scope=subpb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="s-x", reason="litigation"
            ),
            timeout=5,
        )

        async def held_at_central() -> bool:
            return len(central.view.topology.holds) == 1

        await eventually(held_at_central, 10.0, "the hold at eu-central-1")
        await cluster.start_node("eu-west-1")
        await cluster.put("eu-west-1", "instruments", "after", b"public")

        async def unrelated_arrived() -> bool:
            return central.engine.get("instruments", "after") is not None

        await eventually(unrelated_arrived, 20.0, "a record written after the hold at eu-central-1")
        assert live(cluster, "eu-west-1", "customers", "k2")  # the hold keeps it where it is
        assert central.engine.get("customers", "k2") is None
    finally:
        await cluster.stop()


async def test_an_erasure_waits_for_a_region_that_is_down_and_completes_when_it_returns(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, EU, pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        await cluster.wait_linked()
        await put(cluster, "eu-west-1", "customers", "fay", "s-fay", b"Fay")
        await replicated(cluster, EU, "customers", "fay")
        await cluster.stop_node("eu-central-1")
        opened = await erase(cluster, "s-fay")

        async def waiting_for_the_down_region() -> bool:
            return (await request(cluster, opened.request_id)).regions_pending == ("eu-central-1",)

        await eventually(waiting_for_the_down_region, 15.0, "eu-west-1 done, eu-central-1 pending")
        await cluster.start_node("eu-central-1")
        done = await completed(cluster, opened.request_id)
        assert {r.region: r.erased_total for r in done.receipts} == {"eu-west-1": 1, "eu-central-1": 1}
        assert not live(cluster, "eu-central-1", "customers", "fay")
        for node in cluster.nodes.values():  # reported, so no longer kept for re-reporting

            async def forgotten(n: Any = node) -> bool:
                return not n.eraser.receipts

            await eventually(forgotten, 10.0, "the receipt forgotten once reported")
        listed = await coordinator(cluster).ListSubjectRequests(cpb.ListSubjectRequestsRequest(), timeout=5)
        assert [r.request_id for r in listed.requests] == [opened.request_id]
    finally:
        await cluster.stop()


async def test_a_legal_hold_keeps_a_subject_through_an_erasure(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        await put(cluster, "eu-west-1", "customers", "gus", "s-gus", b"Gus")
        await put(cluster, "eu-west-1", "sessions", "gus-web", "s-gus", b"token")
        await coordinator(cluster).PlaceLegalHold(
            cpb.PlaceLegalHoldRequest(
                scope=subpb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="s-gus", reason="litigation 7"
            ),
            timeout=5,
        )
        node = cluster.nodes["eu-west-1"]

        async def held() -> bool:
            return len(node.view.topology.holds) == 1

        await eventually(held, 10.0, "the hold at eu-west-1")
        done = await completed(cluster, (await erase(cluster, "s-gus")).request_id)
        (receipt,) = done.receipts
        assert receipt.erased_total == 0 and receipt.keys_destroyed == 0
        assert {(k.namespace, k.key) for k in receipt.kept} == {("customers", "gus"), ("sessions", "gus-web")}
        assert all("litigation 7" in k.reason for k in receipt.kept)
        assert (await cluster.values("eu-west-1", "customers", "gus")) == {b"Gus"}
    finally:
        await cluster.stop()


async def test_regression_erasure_spares_another_subjects_record_under_the_same_key(
    eu_us: LocalCluster,
) -> None:
    await put(eu_us, "eu-west-1", "customers", "shared", "s-old", b"old owner")
    state = eu_us.nodes["eu-west-1"].engine.get("customers", "shared")
    assert state is not None
    await put(eu_us, "eu-west-1", "customers", "shared", "s-new", b"new owner", context=state.context)

    # The key belongs to s-new in every region before s-old is erased (a region the new record
    # has not reached yet holds s-old's copy, and erasing that is right).
    async def handed_over() -> bool:
        for region in ("eu-central-1", "us-east-1"):
            held = eu_us.nodes[region].engine.get("customers", "shared")
            if held is None or {v.subject_id for v in held.live()} != {"s-new"}:
                return False
        return True

    await eventually(handed_over, 15.0, "customers/shared held for s-new everywhere")
    done = await completed(eu_us, (await erase(eu_us, "s-old")).request_id)
    assert all(r.erased_total == 0 for r in done.receipts)
    assert (await eu_us.values("eu-west-1", "customers", "shared")) == {b"new owner"}


async def test_regression_a_replicated_value_that_looks_sealed_is_sealed_all_the_same(
    eu_us: LocalCluster,
) -> None:
    tricky = KEY_CLASS_TAG + b"\x09user_data" + b"x" * 40
    await put(eu_us, "eu-west-1", "customers", "tricky", "s-tricky", tricky)
    await replicated(eu_us, ["eu-central-1"], "customers", "tricky")
    (stored,) = eu_us.nodes["eu-central-1"].engine.get("customers", "tricky").live()
    assert stored.value != tricky and tricky not in stored.value
    assert (await eu_us.values("eu-central-1", "customers", "tricky")) == {tricky}


async def test_regression_a_put_about_an_erased_subject_is_refused_and_audited(eu_us: LocalCluster) -> None:
    await put(eu_us, "eu-west-1", "customers", "hal", "s-hal", b"Hal")
    await completed(eu_us, (await erase(eu_us, "s-hal")).request_id)
    with pytest.raises(grpc.aio.AioRpcError):
        await put(eu_us, "eu-west-1", "customers", "hal-2", "s-hal", b"again")
    node = eu_us.nodes["eu-west-1"]
    await node.audit.flush()
    entries = [AuditEntry.decode(e.body) for e in node.audit.iter_all()]
    assert any(e.key == "hal-2" and e.decision == "refuse" and e.rule == "subject-erased" for e in entries)


async def test_regression_retention_spares_a_write_that_lands_during_the_sweep(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        node = cluster.nodes["eu-west-1"]
        await put(cluster, "eu-west-1", "sessions", "live-1", "s-ivy", b"old token")
        record = node.sweeper.audit.record
        raced: list[bool] = []

        def record_then_race(**fields: Any) -> Any:
            entry = record(**fields)
            if fields.get("action") == "expire" and not raced:
                # The client writes the key between the sweep's scan and its tombstone.
                raced.append(True)
                state = node.engine.get("sessions", "live-1")
                assert state is not None
                return asyncio.ensure_future(_race(cluster, entry, state))
            return entry

        node.sweeper.audit = types.SimpleNamespace(record=record_then_race)
        report = await node.sweep_retention(node.wall_ms() + 2 * DAY_MS)
        # The key changed after it was judged: the expiry is not carried out (the record's age is
        # its newest live version's, the fresh one's), and nothing the client wrote is lost.
        assert dict(report.spared) == {"sessions": 1} and not report.expired and raced
        assert (await cluster.values("eu-west-1", "sessions", "live-1")) == {b"fresh token", b"old token"}
    finally:
        await cluster.stop()


async def _race(cluster: LocalCluster, entry: Any, state: Any) -> int:
    seq = int(await entry)
    # A concurrent write that did not see the state the sweep judged (no context).
    await put(cluster, "eu-west-1", "sessions", "live-1", "s-ivy", b"fresh token")
    return seq


async def test_regression_a_retention_sweep_deletes_at_most_its_cap(tmp_path: Path) -> None:
    # A clock that jumped ahead makes every short-lived record look expired; one sweep under it
    # deleted them all. The cap bounds one sweep, counts it and logs it; the next sweeps finish
    # an honest backlog.
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    cluster.node_overrides["retention_expire_max"] = 3
    await cluster.start()
    try:
        node = cluster.nodes["eu-west-1"]
        for i in range(5):
            await put(cluster, "eu-west-1", "sessions", f"c-{i}", f"s-c{i}", b"token")
        later = node.wall_ms() + 2 * DAY_MS
        first = await node.sweep_retention(later)
        assert sum(first.expired.values()) == 3 and first.capped
        assert node.metrics.retention_capped._value.get() == 1
        assert sum(live(cluster, "eu-west-1", "sessions", f"c-{i}") for i in range(5)) == 2
        second = await node.sweep_retention(later)
        assert sum(second.expired.values()) == 2 and not second.capped
        assert node.metrics.retention_capped._value.get() == 1
        assert not any(live(cluster, "eu-west-1", "sessions", f"c-{i}") for i in range(5))
    finally:
        await cluster.stop()
