"""An erasure a legal hold deferred is carried out when the hold is released: in every region
that kept records under it, one that was down at the release included, and after a restart;
audited like the erasure, sparing what another hold or a legal obligation still keeps, and
reported to the erasure request as a receipt naming the released hold."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import pytest

from domicile.audit import AuditEntry
from domicile.cli.main import main
from domicile.errors import Unavailable
from domicile.hlc import wall_ms
from domicile.subjects import HoldRelease, HoldScope, LegalHold, RegionReceipt, SubjectOrders, SubjectRequest
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import subject_pb2 as subpb
from node.daemon import Node
from node.lifecycle.erasure import RELEASE_RECEIPTS_META
from node.lifecycle.released_holds import PendingRelease, released_holds
from tests.integration.test_subject_rights import (
    EU,
    NAMESPACES,
    completed,
    coordinator,
    erase,
    live,
    put,
    replicated,
    request,
)
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack


async def place(cluster: LocalCluster, reason: str, **target: str) -> str:
    scope = {
        "subject_id": subpb.LEGAL_HOLD_SCOPE_SUBJECT,
        "key": subpb.LEGAL_HOLD_SCOPE_KEY,
        "namespace": subpb.LEGAL_HOLD_SCOPE_NAMESPACE,
    }
    kind = "subject_id" if "subject_id" in target else "key" if "key" in target else "namespace"
    placed = await coordinator(cluster).PlaceLegalHold(
        cpb.PlaceLegalHoldRequest(scope=scope[kind], reason=reason, **target), timeout=5
    )
    return str(placed.hold.hold_id)


async def release(cluster: LocalCluster, hold_id: str) -> None:
    await coordinator(cluster).ReleaseLegalHold(
        cpb.ReleaseLegalHoldRequest(hold_id=hold_id, reason="case closed"), timeout=5
    )


async def holds_at(cluster: LocalCluster, regions: list[str], hold_ids: set[str]) -> None:
    async def adopted() -> bool:
        return all({h.hold_id for h in cluster.nodes[r].view.topology.holds} == hold_ids for r in regions)

    await eventually(adopted, 10.0, f"holds {sorted(hold_ids)} in {regions}")


async def gone(cluster: LocalCluster, region: str, namespace: str, key: str, timeout_s: float = 15.0) -> None:
    async def erased() -> bool:
        return not live(cluster, region, namespace, key)

    await eventually(erased, timeout_s, f"{namespace}/{key} erased at {region}")


async def audit_entries(node: Node) -> list[AuditEntry]:
    await node.audit.flush()
    return [AuditEntry.decode(e.body) for e in node.audit.iter_all()]


def erased_at_release(entries: list[AuditEntry], hold_id: str) -> list[tuple[str, str]]:
    return [
        (e.namespace, e.key)
        for e in entries
        if e.action == "erase" and e.decision == "erase" and "erased at its release" in e.detail
        if f"legal hold {hold_id} " in e.detail
    ]


def release_receipts(entries: list[AuditEntry], hold_id: str) -> list[dict[str, object]]:
    receipts = [json.loads(e.detail) for e in entries if e.action == "erasure_receipt"]
    return [r for r in receipts if r.get("released_hold") == hold_id]


async def test_regression_records_an_erasure_kept_under_a_hold_are_erased_when_it_is_released(
    tmp_path: Path,
) -> None:
    # A hold stopped the erasure of what it covered, and its release left those records in
    # place for good: the erasure GDPR Art. 17 asks for was deferred, never carried out.
    cluster = LocalCluster(tmp_path, EU, pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        records = [
            ("customers", "anna", "s-anna"),
            ("sessions", "anna-web", "s-anna"),
            ("customers", "anna-case", "s-anna"),  # under a second hold too
            ("trades", "t-1", "s-anna"),  # a legal obligation keeps it
            ("customers", "bob", "s-bob"),  # not erased
        ]
        for namespace, key, subject in records:
            await put(cluster, "eu-west-1", namespace, key, subject, f"{key} value".encode())
        for namespace, key, _ in records:
            await replicated(cluster, EU, namespace, key)
        subject_hold = await place(cluster, "litigation 7", subject_id="s-anna")
        case_hold = await place(cluster, "case 42", namespace="customers", key="anna-case")
        await holds_at(cluster, EU, {subject_hold, case_hold})

        done = await completed(cluster, (await erase(cluster, "s-anna")).request_id)
        for receipt in done.receipts:
            assert receipt.erased_total == 0 and receipt.kept_total == 4, receipt
        for region in EU:
            assert cluster.nodes[region].keyring.key_classes("s-anna") == [
                "cache",
                "transaction_data",
                "user_data",
            ]

        await release(cluster, subject_hold)
        for region in EU:
            await gone(cluster, region, "customers", "anna")
            await gone(cluster, region, "sessions", "anna-web")
        for region in EU:
            node = cluster.nodes[region]

            async def finished(n: Node = node) -> bool:
                return not n.eraser.releases and not n.eraser._releasing

            await eventually(finished, 10.0, f"the release carried out at {region}")
            # The second hold and the legal obligation still keep theirs, and their keys.
            assert live(cluster, region, "customers", "anna-case") and live(cluster, region, "trades", "t-1")
            assert live(cluster, region, "customers", "bob")
            assert (await cluster.get(region, "customers", "anna-case")).versions[
                0
            ].value == b"anna-case value"
            assert node.keyring.key_classes("s-anna") == ["transaction_data", "user_data"]
        # Each region erased what it kept itself (or found it tombstoned by the other's first);
        # the one that did audited each record and a receipt, as the DPO who released the hold.
        erasers = []
        for region in EU:
            entries = await audit_entries(cluster.nodes[region])
            erased = erased_at_release(entries, subject_hold)
            receipts = release_receipts(entries, subject_hold)
            if erased:
                erasers.append(region)
                assert set(erased) <= {("customers", "anna"), ("sessions", "anna-web")}, erased
                (receipt,) = receipts
                assert receipt["request"] == done.request_id and receipt["kept_total"] == 2
                assert receipt["keys_destroyed"] == 1  # cache: nothing of that class is kept
                (released,) = [
                    e
                    for e in entries
                    if e.action == "hold_released" and e.detail.startswith(f"legal hold {subject_hold} ")
                ]
                principals = {e.principal for e in entries if "erased at its release" in e.detail}
                assert principals == {released.principal}, principals
        assert erasers, "no region audited the erasure at the release"

        # Idempotent: carried out again, it finds nothing and records nothing.
        node = cluster.nodes["eu-west-1"]
        before = len(await audit_entries(node))
        held = LegalHold(subject_hold, HoldScope.SUBJECT, subject_id="s-anna", reason="litigation 7")
        (pending,), _ = released_holds((held,), (), (HoldRelease(subject_hold, 1, "case closed"),))
        again = await node.eraser.erase_released(
            "s-anna", done.request_id, pending, node.view.topology.cluster, node.view.topology.holds
        )
        assert again == 0 and len(await audit_entries(node)) == before

        # The second hold's release erases what it kept; the obligation still keeps the trade.
        await release(cluster, case_hold)
        for region in EU:
            await gone(cluster, region, "customers", "anna-case")

            async def user_key_destroyed(r: str = region) -> bool:
                return cluster.nodes[r].keyring.key_classes("s-anna") == ["transaction_data"]

            await eventually(user_key_destroyed, 10.0, f"the user_data key destroyed at {region}")
            assert live(cluster, region, "trades", "t-1") and live(cluster, region, "customers", "bob")
    finally:
        await cluster.stop()


async def test_a_region_down_at_the_release_erases_what_the_hold_kept_when_it_returns(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, EU, pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        await put(cluster, "eu-west-1", "customers", "cara", "s-cara", b"Cara")
        await put(cluster, "eu-west-1", "customers", "dan", "s-dan", b"Dan")
        for key in ("cara", "dan"):
            await replicated(cluster, EU, "customers", key)
        hold = await place(cluster, "audit of 2026", namespace="customers")
        await holds_at(cluster, EU, {hold})
        done = await completed(cluster, (await erase(cluster, "s-cara")).request_id)
        assert all(r.kept_total == 1 for r in done.receipts)

        await cluster.stop_node("eu-central-1")
        await release(cluster, hold)
        await gone(cluster, "eu-west-1", "customers", "cara")
        # eu-central-1 returns alone: what it kept can only go by its own erasure.
        await cluster.stop_node("eu-west-1")
        await cluster.start_node("eu-central-1")
        await gone(cluster, "eu-central-1", "customers", "cara")
        assert live(cluster, "eu-central-1", "customers", "dan")  # never erased
        entries = await audit_entries(cluster.nodes["eu-central-1"])
        assert erased_at_release(entries, hold) == [("customers", "cara")]
        assert [e.action for e in entries].count("hold_released") == 1
    finally:
        await cluster.stop()


async def test_a_release_noted_before_a_restart_is_carried_out_after_it(tmp_path: Path) -> None:
    # The node notes a release before it stores the holds without it; a crash in between leaves
    # the stored holds naming the released one. Started again (here without the coordinator, so
    # nothing but the note can tell it), it erases what the hold kept all the same.
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        await put(cluster, "eu-west-1", "customers", "eve", "s-eve", b"Eve")
        hold = await place(cluster, "litigation 9", subject_id="s-eve")
        await holds_at(cluster, ["eu-west-1"], {hold})
        await completed(cluster, (await erase(cluster, "s-eve")).request_id)
        assert live(cluster, "eu-west-1", "customers", "eve")

        await cluster.stop_coordinator()
        node = cluster.nodes["eu-west-1"]
        await node.eraser.note_released([PendingRelease(h, "coordinator") for h in node.view.topology.holds])
        await cluster.stop_node("eu-west-1")
        node = await cluster.start_node("eu-west-1")
        assert {h.hold_id for h in node.view.topology.holds} == {hold}  # the stored set
        await gone(cluster, "eu-west-1", "customers", "eve")

        async def cleared() -> bool:
            return not node.eraser.releases and not node.eraser._releasing

        await eventually(cleared, 10.0, "the noted release cleared")
        assert erased_at_release(await audit_entries(node), hold) == [("customers", "eve")]
        assert node.keyring.key_classes("s-eve") == []
    finally:
        await cluster.stop()


async def no_release_running(node: Node) -> None:
    """Waits for the release passes only: an erasure order's pass may be waiting for the stopped
    coordinator to take its receipt, which these tests do not look at."""

    async def idle() -> bool:
        return not node.eraser._releasing

    await eventually(idle, 15.0, "the release passes done")


async def _kept_under_a_hold(cluster: LocalCluster, key: str, subject: str, **target: str) -> str:
    """One region: the subject's record kept by a hold from the subject's erasure; the hold id."""
    await put(cluster, "eu-west-1", "customers", key, subject, key.title().encode())
    hold = await place(cluster, "litigation 11", **target)
    await holds_at(cluster, ["eu-west-1"], {hold})
    await completed(cluster, (await erase(cluster, subject)).request_id)
    assert live(cluster, "eu-west-1", "customers", key)
    return hold


async def test_regression_a_hold_gone_from_the_orders_without_a_release_keeps_what_it_kept(
    tmp_path: Path,
) -> None:
    # A coordinator restored to a point before a hold was placed sends a set without it, and
    # no release of it: nobody released it, and what it kept must not be destroyed.
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        await _kept_under_a_hold(cluster, "fay", "s-fay", subject_id="s-fay")
        await cluster.stop_coordinator()
        node = cluster.nodes["eu-west-1"]
        orders = node.view.orders
        # No erasure orders: the subject's is done, and one still listed would be carried out
        # again, its receipt waiting for the stopped coordinator (wait_idle with it).
        await node._adopt_orders(SubjectOrders(orders.revision + 1, (), (), ()))
        await no_release_running(node)
        assert not node.eraser.releases
        assert live(cluster, "eu-west-1", "customers", "fay")
        assert node.keyring.key_classes("s-fay") == ["user_data"]
    finally:
        await cluster.stop()


async def test_regression_a_noted_release_whose_hold_is_in_force_again_is_dropped(tmp_path: Path) -> None:
    # A release noted, then a set from the coordinator that has the hold again (restored to a
    # point before the release): the hold is in force, and keeps what it covers, restart or not.
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        await _kept_under_a_hold(cluster, "gus", "s-gus", subject_id="s-gus")
        await cluster.stop_coordinator()
        node = cluster.nodes["eu-west-1"]
        orders = node.view.orders
        await node.eraser.note_released([PendingRelease(h, "coordinator") for h in orders.holds])
        await node._adopt_orders(SubjectOrders(orders.revision + 1, (), orders.holds, ()))
        await no_release_running(node)
        assert not node.eraser.releases
        assert live(cluster, "eu-west-1", "customers", "gus")
        await cluster.stop_node("eu-west-1")
        node = await cluster.start_node("eu-west-1")
        await no_release_running(node)
        assert not node.eraser.releases
        assert live(cluster, "eu-west-1", "customers", "gus")
    finally:
        await cluster.stop()


async def test_regression_a_release_destroys_the_keys_of_a_subject_whose_kept_records_are_erased_already(
    tmp_path: Path,
) -> None:
    # Another region's pass at the release (or this node's, cut short before the keys went)
    # tombstoned the kept record already: the subject's keys here must still be destroyed.
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        hold = await _kept_under_a_hold(cluster, "hal", "s-hal", namespace="customers")
        node = cluster.nodes["eu-west-1"]
        state = node.engine.get("customers", "hal")
        assert state is not None
        await node.eraser._tombstone("customers", "hal", list(state.live()))
        assert not live(cluster, "eu-west-1", "customers", "hal")
        assert node.keyring.key_classes("s-hal") == ["user_data"]
        await release(cluster, hold)

        async def destroyed() -> bool:
            return node.keyring.key_classes("s-hal") == [] and not node.eraser.releases

        await eventually(destroyed, 10.0, "the s-hal keys destroyed at the release")
        receipts = release_receipts(await audit_entries(node), hold)
        assert [r["keys_destroyed"] for r in receipts] == [1], receipts
    finally:
        await cluster.stop()


async def test_regression_a_release_whose_note_could_not_be_written_is_noted_when_the_set_comes_again(
    tmp_path: Path,
) -> None:
    # The note is durable before it counts: had it gone into memory first, the same set coming
    # again would look noted, be stored without the hold, and a crash would lose the release.
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        hold = await _kept_under_a_hold(cluster, "ida", "s-ida", subject_id="s-ida")
        await cluster.stop_coordinator()
        node = cluster.nodes["eu-west-1"]
        orders = node.view.orders
        released = SubjectOrders(orders.revision + 1, (), (), (HoldRelease(hold, 1, "case closed", "dpo-1"),))
        save = node.eraser._save_releases

        async def failing(releases: object = None) -> None:
            raise Unavailable("the store did not take the write")

        node.eraser._save_releases = failing  # type: ignore[method-assign]
        with pytest.raises(Unavailable):
            await node._adopt_orders(released)
        assert not node.eraser.releases
        assert {h.hold_id for h in node.view.topology.holds} == {hold}  # nothing adopted
        node.eraser._save_releases = save  # type: ignore[method-assign]
        await node._adopt_orders(released)
        await gone(cluster, "eu-west-1", "customers", "ida")
        await no_release_running(node)
        assert erased_at_release(await audit_entries(node), hold) == [("customers", "ida")]
    finally:
        await cluster.stop()


async def with_release_receipts(cluster: LocalCluster, request_id: str, count: int) -> SubjectRequest:
    """The request once it shows `count` receipts of erasures at a hold's release."""

    async def shown() -> bool:
        return len((await request(cluster, request_id)).release_receipts) >= count

    await eventually(shown, 15.0, f"{count} release receipts on {request_id}")
    return await request(cluster, request_id)


async def nothing_left_to_report(node: Node) -> None:
    async def reported() -> bool:
        return not node.eraser.release_receipts and not node.eraser._reporting

    await eventually(reported, 15.0, "the release receipts reported and forgotten")
    assert json.loads(node.engine.get_meta(RELEASE_RECEIPTS_META) or b"{}") == {}


async def requests_show(cluster: LocalCluster, *argv: str) -> tuple[int, str]:
    """`domicile requests show`, in a thread (the command runs an event loop of its own)."""
    out = io.StringIO()
    args = ["requests", "show", *argv, "--coordinator", cluster.coordinator_address, *cluster.cli_args()]

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return main(args)

    code = await asyncio.to_thread(run)
    return code, out.getvalue()


async def test_the_erasure_request_shows_what_was_erased_at_the_release_of_a_hold(tmp_path: Path) -> None:
    # The request answered the data subject with "kept under a hold" for good: what the region
    # erased at the release was only in its audit trail.
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        for namespace, key in (("customers", "kim"), ("sessions", "kim-web"), ("trades", "t-9")):
            await put(cluster, "eu-west-1", namespace, key, "s-kim", f"{key} value".encode())
        hold = await place(cluster, "litigation 12", subject_id="s-kim")
        await holds_at(cluster, ["eu-west-1"], {hold})
        done = await completed(cluster, (await erase(cluster, "s-kim")).request_id)
        (own,) = done.receipts
        assert own.erased_total == 0 and own.kept_total == 3 and not own.released_hold_id
        assert done.release_receipts == ()

        released_at = wall_ms()
        await release(cluster, hold)
        shown = await with_release_receipts(cluster, done.request_id, 1)
        # The erasure's own receipt stays as it was; the release's is beside it.
        assert shown.receipts == done.receipts and shown.completed_ms == done.completed_ms
        (at_release,) = shown.release_receipts
        assert (at_release.region, at_release.node_id, at_release.released_hold_id) == (
            "eu-west-1",
            "eu-west-1",
            hold,
        )
        assert at_release.erased == (("customers", 1), ("sessions", 1))
        assert at_release.kept_total == 1 and at_release.kept == ()  # the trade: a legal obligation
        assert at_release.keys_destroyed == 2  # user_data and cache; transaction_data is kept
        assert released_at <= at_release.started_ms <= at_release.completed_ms <= wall_ms()
        node = cluster.nodes["eu-west-1"]
        (entry,) = [
            e
            for e in await audit_entries(node)
            if e.action == "erasure_receipt" and json.loads(e.detail).get("released_hold") == hold
        ]
        assert at_release.audit_seq == entry.seq
        await nothing_left_to_report(node)

        # Reported again (a retry whose answer was lost): the request keeps the first.
        retried = RegionReceipt("eu-west-1", "eu-west-1", 1, 2, (("customers", 7),), released_hold_id=hold)
        await node._report_erasure(done.request_id, retried)
        assert (await request(cluster, done.request_id)).release_receipts == (at_release,)

        code, out = await requests_show(cluster, done.request_id)
        assert code == 0
        lines = out.splitlines()
        at = lines.index("erased at hold releases (1 receipt):")
        assert lines[at + 1].startswith(f"  eu-west-1  node eu-west-1  at the release of {hold}  completed ")
        assert lines[at + 2 :] == [
            "    erased:         2 records (customers 1, sessions 1)",
            "    keys destroyed: 2",
            "    still kept:     1 record",
        ]
        code, out = await requests_show(cluster, done.request_id, "--json")
        doc = json.loads(out)
        (shown_json,) = doc["release_receipts"]
        assert (shown_json["released_hold_id"], shown_json["erased_total"], shown_json["kept_total"]) == (
            hold,
            2,
            1,
        )
        assert [r["released_hold_id"] for r in doc["receipts"]] == [""]
    finally:
        await cluster.stop()


async def test_a_release_receipt_waits_in_the_store_while_the_coordinator_is_unreachable(
    tmp_path: Path,
) -> None:
    # The node hears of the release, then loses the coordinator: the receipt of what it erased
    # must outlive retries and a restart of the node, and reach the request once it can.
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        await put(cluster, "eu-west-1", "customers", "lea", "s-lea", b"Lea")
        hold = await place(cluster, "litigation 13", subject_id="s-lea")
        await holds_at(cluster, ["eu-west-1"], {hold})
        done = await completed(cluster, (await erase(cluster, "s-lea")).request_id)
        await cluster.stop_coordinator()
        node = cluster.nodes["eu-west-1"]
        orders = node.view.orders
        await node._adopt_orders(
            SubjectOrders(orders.revision + 1, (), (), (HoldRelease(hold, 1, "case closed", "dpo-1"),))
        )
        await gone(cluster, "eu-west-1", "customers", "lea")
        await no_release_running(node)
        ((request_id, waiting),) = node.eraser.release_receipts.values()
        assert request_id == done.request_id and waiting.erased == (("customers", 1),)
        assert waiting.released_hold_id == hold
        assert node.eraser._reporting  # retrying

        await cluster.stop_node("eu-west-1")
        # The coordinator comes back and the hold is released there (what the node heard of)
        # before the node returns: the node's first act is to report what waited in its store.
        await cluster.start_coordinator()
        await release(cluster, hold)
        node = await cluster.start_node("eu-west-1")
        assert list(node.eraser.release_receipts.values()) == [(done.request_id, waiting)]
        shown = await with_release_receipts(cluster, done.request_id, 1)
        assert shown.release_receipts == (waiting,) and shown.receipts == done.receipts
        await nothing_left_to_report(node)
    finally:
        await cluster.stop()
