"""Data-subject requests and legal holds over the wire: a real coordinator on a free port."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordinator import Coordinator, CoordinatorConfig
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import subject_pb2 as spb
from tests.support.cluster import REGIONS, LocalCluster

RPC_TIMEOUT_S = 5.0
REGION_NAMES = [r["name"] for r in REGIONS]
DAY_S = 86_400
START_S = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC).timestamp()

ERASURE = spb.SUBJECT_REQUEST_KIND_ERASURE
ACCESS = spb.SUBJECT_REQUEST_KIND_ACCESS
OPEN = spb.SUBJECT_REQUEST_STATUS_OPEN
COMPLETED = spb.SUBJECT_REQUEST_STATUS_COMPLETED


class WallClock:
    def __init__(self, start_s: float) -> None:
        self.now = start_s

    def __call__(self) -> float:
        return self.now


class Harness:
    """A coordinator with an injected wall clock, on the config LocalCluster writes; restartable."""

    def __init__(self, root: Path) -> None:
        self.cluster = LocalCluster(root, [])
        self.root = root
        self.wall = WallClock(START_S)
        self.coordinator: Coordinator | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: cpb_grpc.CoordinatorServiceStub | None = None

    async def start(self) -> cpb_grpc.CoordinatorServiceStub:
        self.coordinator = Coordinator(
            CoordinatorConfig(
                cluster_config=self.cluster.config_path,
                listen="127.0.0.1:0",
                metrics_port=0,
                data_dir=self.root / "coordinator",
                shutdown_grace_s=0.2,
                # The desk's rules, not identities, are under test here: the test plays every region.
                insecure=True,
            ),
            wall_clock=self.wall,
        )
        await self.coordinator.start()
        self.channel = grpc.aio.insecure_channel(self.coordinator.address)
        self.stub = cpb_grpc.CoordinatorServiceStub(self.channel)
        return self.stub

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.coordinator is not None:
            await self.coordinator.stop()
            self.coordinator = None

    async def restart(self) -> cpb_grpc.CoordinatorServiceStub:
        await self.stop()
        return await self.start()

    def gauge(self, name: str, **labels: str) -> float | None:
        if self.coordinator is None:
            raise AssertionError("coordinator not started")
        value = self.coordinator.metrics.registry.get_sample_value(name, labels)
        return None if value is None else float(value)


async def register(stub: cpb_grpc.CoordinatorServiceStub, region: str) -> int:
    request = cpb.RegisterNodeRequest(node_id=f"{region}-a", region=region, address="10.0.0.1:7401")
    return int((await call(stub, "RegisterNode", request)).topology_revision)


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[Harness]:
    """A coordinator no node has registered with."""
    h = Harness(tmp_path)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """A coordinator with one registered node per region."""
    h = Harness(tmp_path)
    stub = await h.start()
    for region in REGION_NAMES:
        await register(stub, region)
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
def stub(harness: Harness) -> cpb_grpc.CoordinatorServiceStub:
    if harness.stub is None:
        raise AssertionError("coordinator not started")
    return harness.stub


async def call(stub: cpb_grpc.CoordinatorServiceStub, method: str, request: Any) -> Any:
    return await getattr(stub, method)(request, timeout=RPC_TIMEOUT_S)


async def erase(
    stub, subject: str, reason: str = "customer asked", jurisdiction: str = ""
) -> spb.SubjectRequest:
    response = await call(
        stub,
        "EraseSubject",
        cpb.EraseSubjectRequest(subject_id=subject, reason=reason, subject_jurisdiction=jurisdiction),
    )
    return response.request


async def report(stub, request_id: str, region: str, erased: int = 1, **fields: Any) -> spb.SubjectRequest:
    receipt = spb.RegionErasureReceipt(
        region=region,
        node_id=fields.pop("node_id", f"{region}-a"),
        started_unix_ms=int(START_S * 1000),
        completed_unix_ms=int(START_S * 1000) + 20,
        keys_destroyed=1,
        audit_seq=3,
        **fields,
    )
    receipt.erased.add(namespace="customers_eu", records=erased)
    response = await call(
        stub, "ReportErasure", cpb.ReportErasureRequest(request_id=request_id, receipt=receipt)
    )
    return response.request


async def topology(stub) -> cpb.Topology:
    return (await call(stub, "GetTopology", cpb.GetTopologyRequest())).topology


async def place(stub, **fields: Any) -> spb.LegalHold:
    return (await call(stub, "PlaceLegalHold", cpb.PlaceLegalHoldRequest(**fields))).hold


async def next_topology(watch) -> cpb.Topology:
    # The timeout only keeps a broken stream from hanging the suite; it asserts nothing.
    return (await asyncio.wait_for(watch.read(), timeout=RPC_TIMEOUT_S)).topology


async def next_orders(watch) -> cpb.WatchSubjectOrdersResponse:
    """The next whole set of erasure orders and holds on a WatchSubjectOrders stream, its pages
    gathered into one message."""
    whole = cpb.WatchSubjectOrdersResponse()
    while True:
        # The timeout only keeps a broken stream from hanging the suite; it asserts nothing.
        page = await asyncio.wait_for(watch.read(), timeout=RPC_TIMEOUT_S)
        if page.page == 0:
            whole = cpb.WatchSubjectOrdersResponse(revision=page.revision)
        whole.erasures.extend(page.erasures)
        whole.holds.extend(page.holds)
        if page.last:
            return whole


async def orders(stub) -> cpb.WatchSubjectOrdersResponse:
    watch = stub.WatchSubjectOrders(cpb.WatchSubjectOrdersRequest())
    try:
        return await next_orders(watch)
    finally:
        watch.cancel()


# --- erasure -----------------------------------------------------------------------------------


async def test_erasure_is_watched_reported_and_completed(stub, harness: Harness) -> None:
    watch = stub.WatchSubjectOrders(cpb.WatchSubjectOrdersRequest())
    first = await next_orders(watch)
    assert list(first.erasures) == []

    request = await erase(stub, "cust-1", "by email", "DE")
    assert request.request_id.startswith("req-") and len(request.request_id) == 14
    assert (request.kind, request.status) == (ERASURE, OPEN)
    assert (request.subject_id, request.subject_jurisdiction, request.reason) == ("cust-1", "DE", "by email")
    assert list(request.regions_pending) == REGION_NAMES
    assert request.received_unix_ms == int(START_S * 1000)
    assert request.due_unix_ms == int(dt.datetime(2025, 4, 1, 12, tzinfo=dt.UTC).timestamp() * 1000)

    opened = await next_orders(watch)
    assert opened.revision == (await topology(stub)).revision > first.revision
    [order] = opened.erasures
    assert (order.request_id, order.subject_id, order.requested_unix_ms) == (
        request.request_id,
        "cust-1",
        request.received_unix_ms,
    )
    assert list(order.regions_pending) == REGION_NAMES

    harness.wall.now += 3600
    for n, region in enumerate(REGION_NAMES):
        after = await report(stub, request.request_id, region, erased=n)
        seen = await next_orders(watch)
        assert seen.revision == opened.revision + n + 1
        if n < len(REGION_NAMES) - 1:
            assert after.status == OPEN
            assert list(seen.erasures[0].regions_pending) == REGION_NAMES[n + 1 :]
    assert after.status == COMPLETED
    assert after.completed_unix_ms == int((START_S + 3600) * 1000)
    assert [r.region for r in after.receipts] == REGION_NAMES
    assert [r.erased[0].records for r in after.receipts] == [0, 1, 2, 3]
    assert list(seen.erasures) == []
    # The topology never carries them.
    assert list((await topology(stub)).erasures) == []

    got = await call(stub, "GetSubjectRequest", cpb.GetSubjectRequestRequest(request_id=request.request_id))
    assert got.request == after
    watch.cancel()


async def test_a_region_is_waited_for_once_it_has_a_node(bare: Harness) -> None:
    stub = bare.stub
    request = await erase(stub, "cust-1")
    # Nothing registered, nothing can hold the subject's records.
    assert (request.status, list(request.regions_pending)) == (COMPLETED, [])

    await register(stub, "eu-west-1")
    request = await erase(stub, "cust-2")
    assert list(request.regions_pending) == ["eu-west-1"]
    revision = await register(stub, "ap-northeast-1")
    latest = await orders(stub)
    # The registration answers with the revision that orders the new region to erase too.
    assert revision == latest.revision
    assert list(latest.erasures[0].regions_pending) == ["eu-west-1", "ap-northeast-1"]
    await report(stub, request.request_id, "eu-west-1")
    done = await report(stub, request.request_id, "ap-northeast-1")
    assert done.status == COMPLETED


async def test_second_erasure_of_a_subject_already_exists(stub) -> None:
    first = await erase(stub, "cust-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await erase(stub, "cust-1")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.request_id in err.value.details()
    assert len((await orders(stub)).erasures) == 1


async def test_repeated_report_returns_the_request_unchanged(stub) -> None:
    request = await erase(stub, "cust-1")
    once = await report(stub, request.request_id, "eu-west-1", erased=4)
    revision = (await topology(stub)).revision
    twice = await report(stub, request.request_id, "eu-west-1", erased=9)
    assert twice == once
    assert (await topology(stub)).revision == revision


# --- access -----------------------------------------------------------------------------------


async def test_access_request_is_opened_completed_and_listed(stub, harness: Harness) -> None:
    revision = (await topology(stub)).revision
    opened = (
        await call(
            stub,
            "OpenSubjectRequest",
            cpb.OpenSubjectRequestRequest(
                kind=ACCESS, subject_id="cust-2", subject_jurisdiction="US-CA", reason="portal"
            ),
        )
    ).request
    assert (opened.kind, opened.status) == (ACCESS, OPEN)
    assert opened.due_unix_ms == int((START_S + 45 * DAY_S) * 1000)
    harness.wall.now += 60
    done = (
        await call(
            stub,
            "CompleteSubjectRequest",
            cpb.CompleteSubjectRequestRequest(request_id=opened.request_id, records_exported=17),
        )
    ).request
    assert (done.status, done.records_exported) == (COMPLETED, 17)
    assert done.completed_unix_ms == int((START_S + 60) * 1000)
    # Nodes have no part in access requests: the topology stays as it was.
    assert (await topology(stub)).revision == revision

    erasure = await erase(stub, "cust-3")
    listed = (await call(stub, "ListSubjectRequests", cpb.ListSubjectRequestsRequest())).requests
    assert [r.request_id for r in listed] == [erasure.request_id, opened.request_id]
    assert listed[1] == done
    open_only = await call(stub, "ListSubjectRequests", cpb.ListSubjectRequestsRequest(open_only=True))
    assert [r.request_id for r in open_only.requests] == [erasure.request_id]
    one = await call(stub, "ListSubjectRequests", cpb.ListSubjectRequestsRequest(limit=1))
    assert [r.request_id for r in one.requests] == [erasure.request_id]


# --- legal holds ------------------------------------------------------------------------------


async def test_holds_are_placed_listed_released_and_distributed(stub, harness: Harness) -> None:
    watch = stub.WatchSubjectOrders(cpb.WatchSubjectOrdersRequest())
    start = await next_orders(watch)
    subject = await place(stub, scope=spb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="cust-1", reason="case 17")
    namespace = await place(
        stub, scope=spb.LEGAL_HOLD_SCOPE_NAMESPACE, namespace="customers_jp", reason="audit"
    )
    key = await place(
        stub, scope=spb.LEGAL_HOLD_SCOPE_KEY, namespace="customers_eu", key="cust-9", reason="litigation"
    )
    assert subject.hold_id.startswith("hold-") and len(subject.hold_id) == 15
    assert subject.placed_unix_ms == int(START_S * 1000)
    assert (key.scope, key.namespace, key.key, key.reason) == (
        spb.LEGAL_HOLD_SCOPE_KEY,
        "customers_eu",
        "cust-9",
        "litigation",
    )
    seen = await next_orders(watch)
    # Latest wins: a watcher may skip a set, never the newest one.
    while len(seen.holds) < 3:
        seen = await next_orders(watch)
    assert seen.revision == (await topology(stub)).revision > start.revision
    assert list(seen.holds) == [subject, namespace, key]
    listed = await call(stub, "ListLegalHolds", cpb.ListLegalHoldsRequest())
    assert list(listed.holds) == [subject, namespace, key]

    released = await call(
        stub, "ReleaseLegalHold", cpb.ReleaseLegalHoldRequest(hold_id=namespace.hold_id, reason="done")
    )
    assert released.hold == namespace
    seen = await next_orders(watch)
    assert list(seen.holds) == [subject, key]
    assert list((await call(stub, "ListLegalHolds", cpb.ListLegalHoldsRequest())).holds) == [subject, key]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(stub, "ReleaseLegalHold", cpb.ReleaseLegalHoldRequest(hold_id=namespace.hold_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "not in force" in err.value.details()
    watch.cancel()


# --- bad input --------------------------------------------------------------------------------

BAD_INPUT = [
    ("EraseSubject", cpb.EraseSubjectRequest(reason="r"), "INVALID_ARGUMENT", "subject id is required"),
    ("EraseSubject", cpb.EraseSubjectRequest(subject_id="c"), "INVALID_ARGUMENT", "reason is required"),
    (
        "EraseSubject",
        cpb.EraseSubjectRequest(subject_id="c", reason="r", subject_jurisdiction="Germany"),
        "INVALID_ARGUMENT",
        "ISO 3166-1 alpha-2",
    ),
    (
        "EraseSubject",
        cpb.EraseSubjectRequest(subject_id="c" * 257, reason="r"),
        "INVALID_ARGUMENT",
        "longer than 256 bytes",
    ),
    (
        "OpenSubjectRequest",
        cpb.OpenSubjectRequestRequest(subject_id="c"),
        "INVALID_ARGUMENT",
        "allowed: SUBJECT_",
    ),
    (
        "OpenSubjectRequest",
        cpb.OpenSubjectRequestRequest(kind=ERASURE, subject_id="c"),
        "INVALID_ARGUMENT",
        "use EraseSubject",
    ),
    (
        "OpenSubjectRequest",
        cpb.OpenSubjectRequestRequest(kind=7, subject_id="c"),  # type: ignore[arg-type]
        "INVALID_ARGUMENT",
        "request kind 7 cannot be opened",
    ),
    (
        "OpenSubjectRequest",
        cpb.OpenSubjectRequestRequest(kind=ACCESS),
        "INVALID_ARGUMENT",
        "subject id is required",
    ),
    (
        "CompleteSubjectRequest",
        cpb.CompleteSubjectRequestRequest(),
        "INVALID_ARGUMENT",
        "request id is required (req- followed by 10 hex digits)",
    ),
    (
        "CompleteSubjectRequest",
        cpb.CompleteSubjectRequestRequest(request_id="req-00000000ff"),
        "NOT_FOUND",
        "no subject request req-00000000ff",
    ),
    (
        "ReportErasure",
        cpb.ReportErasureRequest(request_id="req-00000000ff"),
        "INVALID_ARGUMENT",
        "needs a receipt",
    ),
    (
        "ReportErasure",
        cpb.ReportErasureRequest(
            request_id="req-00000000ff", receipt=spb.RegionErasureReceipt(region="eu-west-1")
        ),
        "NOT_FOUND",
        "no subject request",
    ),
    (
        "ReportErasure",
        cpb.ReportErasureRequest(request_id="nope", receipt=spb.RegionErasureReceipt(region="eu-west-1")),
        "INVALID_ARGUMENT",
        "invalid request id 'nope'",
    ),
    ("GetSubjectRequest", cpb.GetSubjectRequestRequest(), "INVALID_ARGUMENT", "request id is required"),
    (
        "GetSubjectRequest",
        cpb.GetSubjectRequestRequest(request_id="req-00000000ff"),
        "NOT_FOUND",
        "ListSubjectRequests lists them",
    ),
    (
        "ListSubjectRequests",
        cpb.ListSubjectRequestsRequest(limit=1001),
        "INVALID_ARGUMENT",
        "1 to 1000, or 0 for 100",
    ),
    ("PlaceLegalHold", cpb.PlaceLegalHoldRequest(reason="r"), "INVALID_ARGUMENT", "LEGAL_HOLD_SCOPE_SUBJECT"),
    (
        "PlaceLegalHold",
        cpb.PlaceLegalHoldRequest(scope=9, reason="r"),  # type: ignore[arg-type]
        "INVALID_ARGUMENT",
        "scope 9 is not allowed",
    ),
    (
        "PlaceLegalHold",
        cpb.PlaceLegalHoldRequest(scope=spb.LEGAL_HOLD_SCOPE_SUBJECT, reason="r"),
        "INVALID_ARGUMENT",
        "subject id is required",
    ),
    (
        "PlaceLegalHold",
        cpb.PlaceLegalHoldRequest(scope=spb.LEGAL_HOLD_SCOPE_NAMESPACE, reason="r"),
        "INVALID_ARGUMENT",
        "needs a namespace",
    ),
    (
        "PlaceLegalHold",
        cpb.PlaceLegalHoldRequest(scope=spb.LEGAL_HOLD_SCOPE_NAMESPACE, namespace="nope", reason="r"),
        "NOT_FOUND",
        "unknown namespace 'nope'; known namespaces: ",
    ),
    (
        "PlaceLegalHold",
        cpb.PlaceLegalHoldRequest(scope=spb.LEGAL_HOLD_SCOPE_KEY, namespace="customers_eu", reason="r"),
        "INVALID_ARGUMENT",
        "key is empty",
    ),
    (
        "PlaceLegalHold",
        cpb.PlaceLegalHoldRequest(scope=spb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="c"),
        "INVALID_ARGUMENT",
        "reason is required",
    ),
    ("ReleaseLegalHold", cpb.ReleaseLegalHoldRequest(), "INVALID_ARGUMENT", "hold id is required"),
    (
        "ReleaseLegalHold",
        cpb.ReleaseLegalHoldRequest(hold_id="hold-00000000ff"),
        "NOT_FOUND",
        "no legal hold hold-00000000ff",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_msg", "code", "text"),
    BAD_INPUT,
    ids=[f"{m}-{n}" for n, (m, *_) in enumerate(BAD_INPUT)],
)
async def test_bad_input_is_refused_and_changes_nothing(stub, method, request_msg, code, text) -> None:
    before = await topology(stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(stub, method, request_msg)
    assert err.value.code() == getattr(grpc.StatusCode, code)
    assert text in err.value.details()
    assert await topology(stub) == before
    assert list((await call(stub, "ListSubjectRequests", cpb.ListSubjectRequestsRequest())).requests) == []


async def test_bad_reports_and_completions_of_existing_requests(stub) -> None:
    erasure = await erase(stub, "cust-1")
    access = (
        await call(
            stub, "OpenSubjectRequest", cpb.OpenSubjectRequestRequest(kind=ACCESS, subject_id="cust-1")
        )
    ).request
    cases = [
        ("ReportErasure", erasure.request_id, {"region": ""}, "INVALID_ARGUMENT", "names no region"),
        (
            "ReportErasure",
            erasure.request_id,
            {"region": "mars-1"},
            "INVALID_ARGUMENT",
            "unknown region 'mars-1'",
        ),
        (
            "ReportErasure",
            erasure.request_id,
            {"region": "eu-west-1", "node_id": ""},
            "INVALID_ARGUMENT",
            "names no node",
        ),
        (
            "ReportErasure",
            access.request_id,
            {"region": "eu-west-1"},
            "FAILED_PRECONDITION",
            "access request",
        ),
    ]
    before = await topology(stub)
    for method, request_id, fields, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await report(stub, request_id, **fields)
        assert err.value.code() == getattr(grpc.StatusCode, code), (method, fields)
        assert text in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(
            stub, "CompleteSubjectRequest", cpb.CompleteSubjectRequestRequest(request_id=erasure.request_id)
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ReportErasure" in err.value.details()
    assert await topology(stub) == before


async def get(stub, request_id: str) -> spb.SubjectRequest:
    return (
        await call(stub, "GetSubjectRequest", cpb.GetSubjectRequestRequest(request_id=request_id))
    ).request


async def test_a_release_receipt_is_kept_beside_the_erasure_receipts_once(harness: Harness, stub) -> None:
    erasure = await erase(stub, "cust-1")
    for region in REGION_NAMES:
        done = await report(stub, erasure.request_id, region, erased=0)
    assert done.status == COMPLETED
    hold = await place(stub, scope=spb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="cust-1", reason="case 5")
    await call(stub, "ReleaseLegalHold", cpb.ReleaseLegalHoldRequest(hold_id=hold.hold_id, reason="closed"))
    before = await topology(stub)
    once = await report(stub, erasure.request_id, "eu-west-1", erased=4, released_hold_id=hold.hold_id)
    # A retry of the same node's report of the same release is kept once, whatever it says.
    twice = await report(stub, erasure.request_id, "eu-west-1", erased=9, released_hold_id=hold.hold_id)
    assert twice == once
    assert list(once.receipts) == list(done.receipts) and once.status == COMPLETED
    (receipt,) = once.release_receipts
    assert (receipt.region, receipt.node_id, receipt.released_hold_id) == (
        "eu-west-1",
        "eu-west-1-a",
        hold.hold_id,
    )
    assert [(c.namespace, c.records) for c in receipt.erased] == [("customers_eu", 4)]
    assert await topology(stub) == before  # nothing the nodes act on changed
    stub = await harness.restart()
    assert await get(stub, erasure.request_id) == once


async def test_bad_release_receipts_are_refused_and_change_nothing(stub) -> None:
    erasure = await erase(stub, "cust-1")
    done = await report(stub, erasure.request_id, "eu-west-1", erased=0)
    in_force = await place(stub, scope=spb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="cust-1", reason="case 6")
    cases = [
        ("case-6", "INVALID_ARGUMENT", "invalid hold id 'case-6': hold ids are hold- followed by 10"),
        ("hold-00000000ff", "NOT_FOUND", "no legal hold hold-00000000ff was released"),
        (in_force.hold_id, "FAILED_PRECONDITION", f"legal hold {in_force.hold_id} is in force"),
    ]
    for hold_id, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await report(stub, erasure.request_id, "eu-west-1", released_hold_id=hold_id)
        assert err.value.code() == getattr(grpc.StatusCode, code), hold_id
        assert text in err.value.details()
    assert await get(stub, erasure.request_id) == done


# --- restart and metrics ----------------------------------------------------------------------


async def test_requests_and_holds_survive_a_restart(harness: Harness, stub) -> None:
    erasure = await erase(stub, "cust-1")
    await report(stub, erasure.request_id, "eu-west-1", erased=5)
    hold = await place(stub, scope=spb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="cust-2", reason="case 4")
    access = (
        await call(
            stub, "OpenSubjectRequest", cpb.OpenSubjectRequestRequest(kind=ACCESS, subject_id="cust-3")
        )
    ).request
    before = await topology(stub)
    orders_before = await orders(stub)
    listed = (await call(stub, "ListSubjectRequests", cpb.ListSubjectRequestsRequest())).requests

    stub = await harness.restart()
    after = await topology(stub)
    assert after.revision == before.revision
    orders_after = await orders(stub)
    assert list(orders_after.erasures) == list(orders_before.erasures)
    assert list(orders_after.holds) == [hold]
    assert (await call(stub, "ListSubjectRequests", cpb.ListSubjectRequestsRequest())).requests == listed
    # A watcher that resumes from the revision it saw gets nothing new until something changes.
    watch = stub.WatchSubjectOrders(cpb.WatchSubjectOrdersRequest(after_revision=orders_after.revision))
    await report(stub, erasure.request_id, "us-east-1")
    seen = await next_orders(watch)
    assert seen.revision == before.revision + 1
    assert list(seen.erasures[0].regions_pending) == ["eu-central-1", "ap-northeast-1"]
    assert list(seen.holds) == [hold]
    watch.cancel()
    got = await call(stub, "GetSubjectRequest", cpb.GetSubjectRequestRequest(request_id=access.request_id))
    assert got.request.status == OPEN


async def test_metrics_count_open_overdue_requests_and_holds(harness: Harness, stub) -> None:
    assert harness.gauge("domicile_coordinator_subject_requests_open", kind="erasure") == 0
    assert harness.gauge("domicile_coordinator_subject_requests_overdue", kind="access") == 0
    assert harness.gauge("domicile_coordinator_legal_holds") == 0
    await erase(stub, "cust-1", jurisdiction="FR")
    await call(
        stub,
        "OpenSubjectRequest",
        cpb.OpenSubjectRequestRequest(kind=ACCESS, subject_id="cust-2", subject_jurisdiction="US-CA"),
    )
    hold = await place(stub, scope=spb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id="cust-2", reason="case 4")
    assert harness.gauge("domicile_coordinator_subject_requests_open", kind="erasure") == 1
    assert harness.gauge("domicile_coordinator_subject_requests_open", kind="access") == 1
    assert harness.gauge("domicile_coordinator_legal_holds") == 1

    # Overdue depends on the clock alone: the health pass refreshes it.
    harness.wall.now += 32 * DAY_S
    if harness.coordinator is None:
        raise AssertionError("coordinator not started")
    await harness.coordinator.check_health_now()
    assert harness.gauge("domicile_coordinator_subject_requests_overdue", kind="erasure") == 1
    assert harness.gauge("domicile_coordinator_subject_requests_overdue", kind="access") == 0
    harness.wall.now += 14 * DAY_S
    await harness.coordinator.check_health_now()
    assert harness.gauge("domicile_coordinator_subject_requests_overdue", kind="access") == 1

    await call(stub, "ReleaseLegalHold", cpb.ReleaseLegalHoldRequest(hold_id=hold.hold_id))
    assert harness.gauge("domicile_coordinator_legal_holds") == 0
    stub = await harness.restart()
    assert harness.gauge("domicile_coordinator_subject_requests_open", kind="erasure") == 1
    assert harness.gauge("domicile_coordinator_subject_requests_overdue", kind="erasure") == 1
