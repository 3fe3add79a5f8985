"""The coordinator's subject desk with a fake clock and a real store in tmp_path."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.config import CoordinatorLimits
from coordinator.registry import Registry
from coordinator.store import CoordinatorStore
from coordinator.subject_desk import SubjectDesk
from domicile.cluster import ClusterSpec, NamespaceSpec, RegionSpec
from domicile.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from domicile.subjects import (
    DAY_S,
    RELEASES_CARRIED,
    HoldRelease,
    HoldScope,
    KeptRecord,
    RegionReceipt,
    RequestKind,
    RequestStatus,
    SubjectOrders,
)
from domicile.topology import Topology

REGIONS = ("us-east-1", "eu-west-1", "ap-northeast-1")
CLUSTER = ClusterSpec(
    regions=(
        RegionSpec("us-east-1", "US", "US"),
        RegionSpec("eu-west-1", "IE", "EU"),
        RegionSpec("ap-northeast-1", "JP", "JP"),
    ),
    namespaces=(
        NamespaceSpec("customers_eu", ("eu-west-1",), retention_class="user_data"),
        NamespaceSpec("trades", is_global=True, retention_class="transaction_data"),
    ),
)
DAY_MS = DAY_S * 1000


def utc_ms(year: int, month: int, day: int) -> int:
    return int(dt.datetime(year, month, day, 12, tzinfo=dt.UTC).timestamp() * 1000)


class WallClock:
    def __init__(self, start_ms: int) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance_days(self, days: float) -> None:
        self.now_ms += int(days * DAY_MS)


def counting_hex() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{next(counter):010x}"


class Harness:
    """Opens store, registry and desk on one data directory; reopen() simulates a restart."""

    def __init__(self, data_dir: Path, wall: WallClock, limits: CoordinatorLimits) -> None:
        self.data_dir = data_dir
        self.wall = wall
        self.limits = limits
        self.random_hex: Callable[[], str] = counting_hex()
        self.published: list[Topology] = []
        # The erasure orders and holds travel apart from the topology.
        self.orders: list[SubjectOrders] = []
        self.changes = 0
        self.store: CoordinatorStore | None = None
        self.open()

    def open(self) -> None:
        self.store = CoordinatorStore(self.data_dir)
        self.registry = Registry(
            CLUSTER,
            self.store,
            heartbeat_interval_ms=1000,
            missed_heartbeats_max=3,
            limits=self.limits,
            clock=lambda: 0.0,
            wall_clock=lambda: self.wall() / 1000,
            publish=self.published.append,
            on_register=lambda region: self.desk.reconcile(),
            publish_orders=self.orders.append,
        )
        self.desk = SubjectDesk(
            CLUSTER,
            self.store,
            self.registry,
            limits=self.limits,
            now_ms=self.wall,
            random_hex=lambda: self.random_hex(),
            on_change=self.count_change,
        )
        self.desk.reconcile()

    def register(self, region: str) -> None:
        self.registry.register(f"{region}-a", region, "10.0.0.1:7401", "")

    def count_change(self) -> None:
        self.changes += 1

    def reopen(self) -> None:
        self.close()
        self.open()

    def close(self) -> None:
        if self.store is not None:
            self.registry.close()
            self.store.close()
            self.store = None

    @property
    def revision(self) -> int:
        return self.registry.revision


@pytest.fixture
def wall() -> WallClock:
    return WallClock(utc_ms(2025, 3, 1))


@pytest.fixture
def make(tmp_path: Path, wall: WallClock) -> Iterator[Callable[..., Harness]]:
    opened: list[Harness] = []

    def factory(limits: CoordinatorLimits | None = None, regions: tuple[str, ...] = REGIONS) -> Harness:
        h = Harness(tmp_path / f"data{len(opened)}", wall, limits or CoordinatorLimits())
        opened.append(h)
        for region in regions:
            h.register(region)
        return h

    yield factory
    for h in opened:
        h.close()


@pytest.fixture
def h(make: Callable[..., Harness]) -> Harness:
    return make()


def receipt(region: str, erased: int = 2, kept: tuple[KeptRecord, ...] = ()) -> RegionReceipt:
    return RegionReceipt(
        region=region,
        node_id=f"{region}-a",
        started_ms=utc_ms(2025, 3, 2),
        completed_ms=utc_ms(2025, 3, 2) + 50,
        erased=(("customers_eu", erased),),
        kept=kept,
        keys_destroyed=1,
        audit_seq=7,
    )


# --- erasure requests ---------------------------------------------------------------------------


def test_erasure_orders_every_region_and_is_published(h: Harness, wall: WallClock) -> None:
    before = h.revision
    request = h.desk.erase("cust-1", "customer asked by email", "DE")
    assert request.request_id == "req-0000000001"
    assert request.kind is RequestKind.ERASURE
    assert request.status is RequestStatus.OPEN
    assert request.regions_pending == REGIONS
    assert request.received_ms == wall()
    assert (request.subject_id, request.subject_jurisdiction, request.reason) == (
        "cust-1",
        "DE",
        "customer asked by email",
    )
    assert h.revision == before + 1
    assert h.published[-1].revision == h.revision
    published = h.orders[-1]
    assert published.revision == h.revision
    assert [(e.request_id, e.subject_id, e.requested_ms, e.regions_pending) for e in published.erasures] == [
        (request.request_id, "cust-1", wall(), REGIONS)
    ]
    assert h.registry.orders() == published
    assert h.registry.topology().erasures == ()
    assert h.changes == 1


def test_only_regions_with_a_node_are_ordered_and_a_region_that_gains_one_is_added(
    make: Callable[..., Harness],
) -> None:
    h = make(regions=("us-east-1", "ap-northeast-1"))
    request = h.desk.erase("cust-1", "asked")
    # Cluster config order, whatever the order of registration.
    assert request.regions_pending == ("us-east-1", "ap-northeast-1")
    h.desk.report_erasure(request.request_id, receipt("us-east-1"))
    revision = h.revision
    h.register("eu-west-1")
    # One revision for the node, one for the order it now has to carry out.
    assert h.revision == revision + 2
    assert h.orders[-1].erasures[0].regions_pending == ("ap-northeast-1", "eu-west-1")
    assert h.desk.get(request.request_id).regions_pending == ("ap-northeast-1", "eu-west-1")
    # Re-registering changes nothing; a region that reported is not asked again.
    h.register("eu-west-1")
    h.register("us-east-1")
    assert h.revision == revision + 2
    h.desk.report_erasure(request.request_id, receipt("ap-northeast-1"))
    done = h.desk.report_erasure(request.request_id, receipt("eu-west-1"))
    assert done.status is RequestStatus.COMPLETED


def test_an_erasure_with_no_node_anywhere_completes_at_once(
    make: Callable[..., Harness], wall: WallClock
) -> None:
    h = make(regions=())
    request = h.desk.erase("cust-1", "asked")
    assert (request.status, request.regions_pending, request.completed_ms) == (
        RequestStatus.COMPLETED,
        (),
        wall(),
    )
    assert h.orders[-1].erasures == ()


def test_due_dates_gdpr_one_calendar_month_ccpa_45_days(h: Harness, wall: WallClock) -> None:
    wall.now_ms = utc_ms(2025, 1, 31)
    gdpr = h.desk.erase("cust-1", "asked", "DE")
    # One calendar month from 31 January is the last day of February.
    assert gdpr.due_ms == utc_ms(2025, 2, 28)
    ccpa = h.desk.erase("cust-2", "asked", "US-CA")
    assert ccpa.due_ms == utc_ms(2025, 1, 31) + 45 * DAY_MS
    unknown = h.desk.open_access("cust-3")
    assert unknown.due_ms == utc_ms(2025, 2, 28)


@pytest.mark.parametrize(
    ("subject", "reason", "jurisdiction", "message"),
    [
        ("", "asked", "", "subject id is required"),
        ("x" * 257, "asked", "", "longer than 256 bytes"),
        ("cust-1", "", "", "reason is required"),
        ("cust-1", "   ", "", "reason is required"),
        ("cust-1", "r" * 1025, "", "longer than 1024"),
        ("cust-1", "asked", "California", "ISO 3166"),
    ],
)
def test_bad_erasure_is_refused_and_changes_nothing(
    h: Harness, subject: str, reason: str, jurisdiction: str, message: str
) -> None:
    before = h.revision
    with pytest.raises(InvalidArgument, match=message):
        h.desk.erase(subject, reason, jurisdiction)
    assert h.revision == before
    assert h.desk.list() == ()
    assert h.changes == 0


def test_second_open_erasure_of_a_subject_already_exists(h: Harness) -> None:
    first = h.desk.erase("cust-1", "asked")
    revision = h.revision
    with pytest.raises(AlreadyExists, match=first.request_id):
        h.desk.erase("cust-1", "asked again")
    assert h.revision == revision
    # Another subject, and an access request of the same subject, are fine.
    h.desk.erase("cust-2", "asked")
    h.desk.open_access("cust-1")
    for region in REGIONS:
        h.desk.report_erasure(first.request_id, receipt(region))
    again = h.desk.erase("cust-1", "asked once more")
    assert again.request_id != first.request_id


def test_request_completes_when_the_last_region_reports(h: Harness, wall: WallClock) -> None:
    request = h.desk.erase("cust-1", "asked")
    revision = h.revision
    first = h.desk.report_erasure(request.request_id, receipt("eu-west-1", 3))
    assert first.status is RequestStatus.OPEN
    assert first.regions_pending == ("us-east-1", "ap-northeast-1")
    assert [r.region for r in first.receipts] == ["eu-west-1"]
    assert h.revision == revision + 1
    assert h.orders[-1].erasures[0].regions_pending == ("us-east-1", "ap-northeast-1")

    h.desk.report_erasure(request.request_id, receipt("us-east-1", 0))
    wall.advance_days(1)
    kept = (KeptRecord("trades", "t-1", "MiFID II record keeping"),)
    done = h.desk.report_erasure(request.request_id, receipt("ap-northeast-1", 0, kept))
    assert done.status is RequestStatus.COMPLETED
    assert done.completed_ms == wall()
    assert done.regions_pending == ()
    assert [r.region for r in done.receipts] == ["eu-west-1", "us-east-1", "ap-northeast-1"]
    assert done.receipts[-1].kept == kept
    assert h.revision == revision + 3
    assert h.orders[-1].erasures == ()
    assert h.desk.get(request.request_id) == done
    assert h.desk.open_counts()[RequestKind.ERASURE] == 0


def test_a_second_report_of_a_region_changes_nothing(h: Harness) -> None:
    request = h.desk.erase("cust-1", "asked")
    once = h.desk.report_erasure(request.request_id, receipt("eu-west-1", 3))
    revision, changes = h.revision, h.changes
    twice = h.desk.report_erasure(request.request_id, receipt("eu-west-1", 99))
    assert twice == once
    assert twice.receipts[0].erased == (("customers_eu", 3),)
    assert (h.revision, h.changes) == (revision, changes)
    for region in ("us-east-1", "ap-northeast-1"):
        h.desk.report_erasure(request.request_id, receipt(region))
    done = h.desk.get(request.request_id)
    # After completion too.
    assert h.desk.report_erasure(request.request_id, receipt("us-east-1", 5)) == done


def test_bad_reports_are_refused(h: Harness) -> None:
    request = h.desk.erase("cust-1", "asked")
    access = h.desk.open_access("cust-1")
    revision = h.revision
    with pytest.raises(NotFound, match="req-00000000ff"):
        h.desk.report_erasure("req-00000000ff", receipt("eu-west-1"))
    with pytest.raises(InvalidArgument, match="req- followed by 10"):
        h.desk.report_erasure("REQ-1", receipt("eu-west-1"))
    with pytest.raises(InvalidArgument, match="request id is required"):
        h.desk.report_erasure("", receipt("eu-west-1"))
    with pytest.raises(InvalidArgument, match="names no region"):
        h.desk.report_erasure(request.request_id, receipt(""))
    with pytest.raises(InvalidArgument, match="unknown region 'mars-1'; configured regions: us-east-1"):
        h.desk.report_erasure(request.request_id, receipt("mars-1"))
    with pytest.raises(InvalidArgument, match="names no node"):
        h.desk.report_erasure(request.request_id, RegionReceipt("eu-west-1", "", 1, 2))
    with pytest.raises(InvalidArgument, match="invalid node id"):
        h.desk.report_erasure(request.request_id, RegionReceipt("eu-west-1", "Node_1", 1, 2))
    with pytest.raises(FailedPrecondition, match="access request"):
        h.desk.report_erasure(access.request_id, receipt("eu-west-1"))
    assert h.revision == revision
    assert h.desk.get(request.request_id) == request


def release_receipt(region: str, hold_id: str, erased: int = 1, kept_total: int = 0) -> RegionReceipt:
    return replace(
        receipt(region, erased),
        kept=(),
        kept_total=kept_total,
        completed_ms=utc_ms(2025, 4, 1),
        released_hold_id=hold_id,
    )


def _erased_under_a_released_hold(h: Harness) -> tuple[str, str]:
    """An erasure every region reported with a record kept under a hold since released: the
    request id and the hold id."""
    hold = h.desk.place_hold(HoldScope.SUBJECT, subject_id="cust-1", reason="case 7")
    request = h.desk.erase("cust-1", "asked")
    kept = (KeptRecord("customers_eu", "c-1", hold.describe()),)
    for region in REGIONS:
        h.desk.report_erasure(request.request_id, receipt(region, 0, kept if region == "eu-west-1" else ()))
    h.desk.release_hold(hold.hold_id, "case closed")
    return request.request_id, hold.hold_id


def test_a_release_receipt_is_kept_beside_the_erasure_receipts_once_per_node_and_hold(h: Harness) -> None:
    request_id, hold_id = _erased_under_a_released_hold(h)
    done = h.desk.get(request_id)
    revision, changes = h.revision, h.changes
    first = release_receipt("eu-west-1", hold_id, erased=1, kept_total=2)
    after = h.desk.report_erasure(request_id, first)
    # The erasure's own receipts, status and completion time are untouched; no revision either.
    assert (after.receipts, after.status, after.completed_ms) == (
        done.receipts,
        done.status,
        done.completed_ms,
    )
    assert after.release_receipts == (first,)
    assert h.revision == revision and h.changes == changes + 1
    # A retry (the node did not hear the answer) changes nothing, even with other counts.
    again = h.desk.report_erasure(request_id, release_receipt("eu-west-1", hold_id, erased=9))
    assert again == after and h.changes == changes + 1
    # Another node's receipt of the same release is its own.
    other = replace(release_receipt("eu-west-1", hold_id), node_id="eu-west-1-b")
    assert h.desk.report_erasure(request_id, other).release_receipts == (first, other)
    # Kept across a restart of the coordinator, with what is still kept.
    h.reopen()
    stored = h.desk.get(request_id)
    assert stored.release_receipts == (first, other) and stored.receipts == done.receipts
    assert stored.release_receipts[0].kept_total == 2
    assert h.desk.report_erasure(request_id, first) == stored


def test_regression_an_erasure_receipt_keeps_its_kept_total_across_a_coordinator_restart(h: Harness) -> None:
    # The store kept a receipt's listed records but not how many were kept in all, so after a
    # restart a receipt of more kept records than it lists claimed only those it listed.
    request = h.desk.erase("cust-1", "asked")
    listed = (KeptRecord("trades", "t-1", "MiFID II record keeping"),)
    reported = replace(receipt("eu-west-1", 0, listed), kept_total=1500)
    h.desk.report_erasure(request.request_id, reported)
    h.reopen()
    assert h.desk.get(request.request_id).receipts == (reported,)


def test_bad_release_receipts_are_refused_and_change_nothing(h: Harness) -> None:
    request_id, hold_id = _erased_under_a_released_hold(h)
    in_force = h.desk.place_hold(HoldScope.NAMESPACE, namespace="trades", reason="inquiry")
    access = h.desk.open_access("cust-1")
    before = h.desk.get(request_id)
    with pytest.raises(InvalidArgument, match="invalid hold id 'case-7': hold ids are hold- followed by 10"):
        h.desk.report_erasure(request_id, release_receipt("eu-west-1", "case-7"))
    with pytest.raises(InvalidArgument, match=r"region 'mars-1' was not asked to carry out .*its regions: "):
        h.desk.report_erasure(request_id, release_receipt("mars-1", hold_id))
    with pytest.raises(InvalidArgument, match="names no region"):
        h.desk.report_erasure(request_id, release_receipt("", hold_id))
    with pytest.raises(InvalidArgument, match="names no node"):
        h.desk.report_erasure(request_id, replace(release_receipt("eu-west-1", hold_id), node_id=""))
    with pytest.raises(InvalidArgument, match="invalid node id"):
        h.desk.report_erasure(request_id, replace(release_receipt("eu-west-1", hold_id), node_id="Node_1"))
    with pytest.raises(FailedPrecondition, match=f"legal hold {in_force.hold_id} is in force"):
        h.desk.report_erasure(request_id, release_receipt("eu-west-1", in_force.hold_id))
    with pytest.raises(NotFound, match="no legal hold hold-00000000ff was released"):
        h.desk.report_erasure(request_id, release_receipt("eu-west-1", "hold-00000000ff"))
    with pytest.raises(FailedPrecondition, match="access request"):
        h.desk.report_erasure(access.request_id, release_receipt("eu-west-1", hold_id))
    assert h.desk.get(request_id) == before
    h.reopen()
    assert h.desk.get(request_id) == before


# --- access requests ----------------------------------------------------------------------------


def test_access_request_is_recorded_and_completed_without_a_revision(h: Harness, wall: WallClock) -> None:
    revision = h.revision
    request = h.desk.open_access("cust-1", "US-CA", "portal download")
    assert request.kind is RequestKind.ACCESS
    assert request.regions_pending == ()
    assert request.due_ms == wall() + 45 * DAY_MS
    # Nodes have no part in an access request, so the topology does not change.
    assert h.revision == revision
    wall.advance_days(2)
    done = h.desk.complete_access(request.request_id, 12)
    assert (done.status, done.completed_ms, done.records_exported) == (RequestStatus.COMPLETED, wall(), 12)
    assert h.desk.get(request.request_id) == done
    assert h.revision == revision
    assert h.changes == 2


def test_completing_what_is_not_an_open_access_request_is_refused(h: Harness) -> None:
    access = h.desk.open_access("cust-1")
    erasure = h.desk.erase("cust-1", "asked")
    with pytest.raises(NotFound, match="no subject request req-0000000abc"):
        h.desk.complete_access("req-0000000abc", 1)
    with pytest.raises(FailedPrecondition, match="erasure request"):
        h.desk.complete_access(erasure.request_id, 1)
    with pytest.raises(InvalidArgument, match="records exported"):
        h.desk.complete_access(access.request_id, 2**63)
    h.desk.complete_access(access.request_id, 3)
    with pytest.raises(FailedPrecondition, match="completed already"):
        h.desk.complete_access(access.request_id, 4)
    assert h.desk.get(access.request_id).records_exported == 3


def test_open_and_overdue_counts_follow_the_injected_clock(h: Harness, wall: WallClock) -> None:
    # Received 1 March: the GDPR erasure is due 1 April (31 days), the CCPA access in 45 days.
    h.desk.erase("cust-1", "asked", "FR")
    h.desk.open_access("cust-2", "US-CA")
    done = h.desk.open_access("cust-3", "FR")
    h.desk.complete_access(done.request_id, 0)
    assert h.desk.open_counts() == {RequestKind.ERASURE: 1, RequestKind.ACCESS: 1}
    assert h.desk.overdue_counts() == {RequestKind.ERASURE: 0, RequestKind.ACCESS: 0}
    wall.advance_days(31)
    assert h.desk.overdue_counts() == {RequestKind.ERASURE: 0, RequestKind.ACCESS: 0}
    wall.advance_days(1)
    assert h.desk.overdue_counts() == {RequestKind.ERASURE: 1, RequestKind.ACCESS: 0}
    wall.advance_days(14)
    assert h.desk.overdue_counts() == {RequestKind.ERASURE: 1, RequestKind.ACCESS: 1}


def test_list_is_newest_first_with_open_only_and_limits(h: Harness, wall: WallClock) -> None:
    ids = []
    for n in range(5):
        ids.append(h.desk.open_access(f"cust-{n}").request_id)
        wall.advance_days(0.01)
    h.desk.complete_access(ids[1], 0)
    assert [r.request_id for r in h.desk.list()] == ids[::-1]
    assert [r.request_id for r in h.desk.list(limit=2)] == ids[:2:-1]
    assert [r.request_id for r in h.desk.list(open_only=True)] == [ids[4], ids[3], ids[2], ids[0]]
    assert len(h.desk.list(limit=1000)) == 5
    for bad in (-1, 1001):
        with pytest.raises(InvalidArgument, match="1 to 1000, or 0 for 100"):
            h.desk.list(limit=bad)


def test_open_request_limit(make: Callable[..., Harness]) -> None:
    h = make(CoordinatorLimits(open_subject_requests_max=2))
    first = h.desk.open_access("cust-1")
    h.desk.erase("cust-2", "asked")
    with pytest.raises(FailedPrecondition, match="2 subject requests are open, the limit"):
        h.desk.erase("cust-3", "asked")
    h.desk.complete_access(first.request_id, 0)
    h.desk.erase("cust-3", "asked")


def test_ids_are_collision_checked(h: Harness) -> None:
    h.random_hex = itertools.repeat("00000000aa").__next__
    first = h.desk.open_access("cust-1")
    assert first.request_id == "req-00000000aa"
    with pytest.raises(Unavailable, match="no unused req-id found in 16 draws"):
        h.desk.open_access("cust-2")
    digits = iter(["00000000aa", "00000000aa", "00000000bb"])
    h.random_hex = digits.__next__
    assert h.desk.open_access("cust-2").request_id == "req-00000000bb"
    h.random_hex = lambda: "not-hex"
    with pytest.raises(ValueError, match="10 lower-case hex digits"):
        h.desk.open_access("cust-3")


def test_default_ids_are_random_hex(tmp_path: Path, wall: WallClock) -> None:
    store = CoordinatorStore(tmp_path)
    try:
        registry = Registry(
            CLUSTER,
            store,
            heartbeat_interval_ms=1000,
            missed_heartbeats_max=3,
            limits=CoordinatorLimits(),
            clock=lambda: 0.0,
            wall_clock=lambda: 0.0,
            publish=lambda t: None,
        )
        desk = SubjectDesk(CLUSTER, store, registry, limits=CoordinatorLimits(), now_ms=wall)
        ids = {desk.open_access(f"cust-{n}").request_id for n in range(20)}
        assert len(ids) == 20
        assert all(len(i) == 14 and i.startswith("req-") and int(i[4:], 16) >= 0 for i in ids)
        hold = desk.place_hold(HoldScope.SUBJECT, subject_id="cust-1", reason="case 1")
        assert hold.hold_id.startswith("hold-") and len(hold.hold_id) == 15
    finally:
        store.close()


# --- legal holds --------------------------------------------------------------------------------


def test_holds_of_each_scope_are_placed_and_published(h: Harness, wall: WallClock) -> None:
    revision = h.revision
    subject = h.desk.place_hold(HoldScope.SUBJECT, subject_id="cust-1", reason="case 2025-17")
    namespace = h.desk.place_hold(HoldScope.NAMESPACE, namespace="trades", reason="regulator inquiry")
    key = h.desk.place_hold(HoldScope.KEY, namespace="customers_eu", key="cust-9", reason="litigation")
    assert [x.hold_id for x in (subject, namespace, key)] == [
        "hold-0000000001",
        "hold-0000000002",
        "hold-0000000003",
    ]
    assert subject.placed_ms == wall()
    assert (key.scope, key.namespace, key.key, key.reason) == (
        HoldScope.KEY,
        "customers_eu",
        "cust-9",
        "litigation",
    )
    assert h.revision == revision + 3
    assert h.orders[-1].holds == (subject, namespace, key)
    assert h.desk.holds() == (subject, namespace, key)

    released = h.desk.release_hold(namespace.hold_id, "inquiry closed", "spiffe://domicile/client/dpo-anna")
    assert released == namespace
    assert h.revision == revision + 4
    assert h.orders[-1].holds == (subject, key)
    assert h.desk.holds() == (subject, key)
    # The release rides with the set, so that each region audits it as the DPO who made it.
    assert h.orders[-1].released == (
        HoldRelease(namespace.hold_id, wall(), "inquiry closed", "spiffe://domicile/client/dpo-anna"),
    )


def test_the_orders_carry_the_latest_releases_newest_first_also_after_a_restart(
    make: Callable[..., Harness], wall: WallClock
) -> None:
    h = make()
    placed = [
        h.desk.place_hold(HoldScope.SUBJECT, subject_id=f"cust-{i}", reason="case")
        for i in range(RELEASES_CARRIED + 2)
    ]
    for i, hold in enumerate(placed):
        wall.now_ms += 1
        h.desk.release_hold(hold.hold_id, f"closed {i}", f"spiffe://domicile/client/dpo-{i}")
    carried = h.orders[-1].released
    assert len(carried) == RELEASES_CARRIED
    assert [r.hold_id for r in carried] == [hold.hold_id for hold in reversed(placed)][:RELEASES_CARRIED]
    assert carried[0].released_by == f"spiffe://domicile/client/dpo-{RELEASES_CARRIED + 1}"
    h.reopen()
    assert h.registry.orders().released == carried


def test_releases_made_together_are_carried_alike_before_and_after_a_restart(h: Harness) -> None:
    """Releases in one batch share a millisecond: the set published at once and the set a
    restarted coordinator publishes carry them in the same order."""
    holds = [h.desk.place_hold(HoldScope.SUBJECT, subject_id=f"cust-{i}", reason="case") for i in range(5)]
    with h.desk.batch():
        for hold in reversed(holds):
            h.desk.release_hold(hold.hold_id, "closed", "spiffe://domicile/client/dpo")
    published = h.orders[-1].released
    assert {r.hold_id for r in published} == {hold.hold_id for hold in holds}
    h.reopen()
    assert h.registry.orders().released == published


@pytest.mark.parametrize(
    ("scope", "fields", "error", "message"),
    [
        (
            HoldScope.UNSPECIFIED,
            {"subject_id": "c"},
            InvalidArgument,
            "needs a scope: subject, namespace or key",
        ),
        (HoldScope.SUBJECT, {}, InvalidArgument, "subject id is required"),
        (
            HoldScope.SUBJECT,
            {"subject_id": "c", "namespace": "trades"},
            InvalidArgument,
            "no namespace or key",
        ),
        (HoldScope.NAMESPACE, {}, InvalidArgument, "needs a namespace"),
        (HoldScope.NAMESPACE, {"namespace": "nope"}, NotFound, "unknown namespace 'nope'; known namespaces"),
        (HoldScope.NAMESPACE, {"namespace": "trades", "key": "k"}, InvalidArgument, "takes no key"),
        (HoldScope.NAMESPACE, {"namespace": "trades", "subject_id": "c"}, InvalidArgument, "no subject id"),
        (HoldScope.KEY, {"key": "k"}, InvalidArgument, "needs a namespace"),
        (HoldScope.KEY, {"namespace": "trades"}, InvalidArgument, "key is empty"),
        (HoldScope.KEY, {"namespace": "trades", "key": "k" * 1025}, InvalidArgument, "limit is 1024 bytes"),
        (HoldScope.KEY, {"namespace": "trades", "key": "a\x00b"}, InvalidArgument, "NUL"),
        (HoldScope.SUBJECT, {"subject_id": "c", "reason": ""}, InvalidArgument, "reason is required"),
    ],
)
def test_bad_holds_are_refused_and_change_nothing(
    h: Harness, scope: HoldScope, fields: dict[str, str], error: type[Exception], message: str
) -> None:
    revision = h.revision
    args = {"reason": "case 1", **fields}
    with pytest.raises(error, match=message):
        h.desk.place_hold(scope, **args)
    assert h.revision == revision
    assert h.desk.holds() == ()


def test_release_of_unknown_or_released_hold_is_not_found(h: Harness) -> None:
    hold = h.desk.place_hold(HoldScope.SUBJECT, subject_id="cust-1", reason="case 1")
    with pytest.raises(NotFound, match="no legal hold hold-00000000ff"):
        h.desk.release_hold("hold-00000000ff")
    with pytest.raises(InvalidArgument, match="hold- followed by 10"):
        h.desk.release_hold("case-1")
    h.desk.release_hold(hold.hold_id, "settled")
    revision = h.revision
    with pytest.raises(NotFound, match="not in force: it was released at"):
        h.desk.release_hold(hold.hold_id)
    assert h.revision == revision


def test_hold_limit(make: Callable[..., Harness]) -> None:
    h = make(CoordinatorLimits(legal_holds_max=1))
    first = h.desk.place_hold(HoldScope.SUBJECT, subject_id="cust-1", reason="case 1")
    with pytest.raises(FailedPrecondition, match="1 legal holds are in force, the limit"):
        h.desk.place_hold(HoldScope.SUBJECT, subject_id="cust-2", reason="case 2")
    h.desk.release_hold(first.hold_id)
    h.desk.place_hold(HoldScope.SUBJECT, subject_id="cust-2", reason="case 2")


def test_erasures_and_holds_ride_together_in_each_revision(h: Harness) -> None:
    hold = h.desk.place_hold(HoldScope.SUBJECT, subject_id="cust-1", reason="case 1")
    request = h.desk.erase("cust-1", "asked")
    assert h.orders[-1].holds == (hold,)
    assert [e.request_id for e in h.orders[-1].erasures] == [request.request_id]
    h.desk.release_hold(hold.hold_id)
    assert h.orders[-1].holds == ()
    assert [e.request_id for e in h.orders[-1].erasures] == [request.request_id]


# --- persistence --------------------------------------------------------------------------------


def test_state_survives_reopening_the_store(h: Harness, wall: WallClock) -> None:
    open_erasure = h.desk.erase("cust-1", "asked", "DE")
    h.desk.report_erasure(
        open_erasure.request_id, receipt("eu-west-1", 4, (KeptRecord("trades", "t-1", "MiFID II"),))
    )
    done_erasure = h.desk.erase("cust-2", "asked")
    for region in REGIONS:
        h.desk.report_erasure(done_erasure.request_id, receipt(region))
    access = h.desk.open_access("cust-3", "US-CA", "portal")
    done_access = h.desk.open_access("cust-4")
    h.desk.complete_access(done_access.request_id, 9)
    hold = h.desk.place_hold(HoldScope.KEY, namespace="trades", key="t-1", reason="case 1")
    gone = h.desk.place_hold(HoldScope.NAMESPACE, namespace="trades", reason="case 2")
    h.desk.release_hold(gone.hold_id, "closed")
    wall.advance_days(40)
    before = {r.request_id: r for r in h.desk.list()}
    orders = h.registry.orders()
    revision = h.revision

    h.reopen()
    assert h.revision == revision
    assert {r.request_id: r for r in h.desk.list()} == before
    assert h.desk.get(open_erasure.request_id) == before[open_erasure.request_id]
    assert h.desk.get(open_erasure.request_id).receipts[0].kept == (KeptRecord("trades", "t-1", "MiFID II"),)
    assert h.desk.holds() == (hold,)
    assert h.registry.orders().erasures == orders.erasures
    assert h.registry.orders().holds == (hold,)
    assert h.desk.open_counts() == {RequestKind.ERASURE: 1, RequestKind.ACCESS: 1}
    assert h.desk.overdue_counts() == {RequestKind.ERASURE: 1, RequestKind.ACCESS: 0}
    assert h.desk.get(access.request_id).reason == "portal"
    # The reopened desk goes on where it stopped.
    with pytest.raises(AlreadyExists, match=open_erasure.request_id):
        h.desk.erase("cust-1", "asked again")
    with pytest.raises(NotFound, match="not in force"):
        h.desk.release_hold(gone.hold_id)
    done = None
    for region in ("us-east-1", "ap-northeast-1"):
        done = h.desk.report_erasure(open_erasure.request_id, receipt(region))
    assert done is not None and done.status is RequestStatus.COMPLETED
    assert h.revision == revision + 2


def test_closed_desk_refuses_changes(h: Harness) -> None:
    h.registry.close()
    with pytest.raises(Unavailable, match="shutting down"):
        h.desk.erase("cust-1", "asked")
    with pytest.raises(Unavailable, match="shutting down"):
        h.desk.open_access("cust-1")


# --- batches ------------------------------------------------------------------------------------


def test_a_batch_writes_every_change_in_one_revision_and_publishes_the_orders_once(h: Harness) -> None:
    before, published, changes = h.revision, len(h.orders), h.changes
    with h.desk.batch():
        erasures = [h.desk.erase(f"cust-{n}", "bulk import") for n in range(3)]
        hold = h.desk.place_hold(HoldScope.SUBJECT, subject_id="cust-9", reason="case 9")
        gone = h.desk.place_hold(HoldScope.NAMESPACE, namespace="trades", reason="case 10")
        h.desk.release_hold(gone.hold_id, "closed")
        h.desk.report_erasure(erasures[0].request_id, receipt("us-east-1"))
        # Nothing is published before the block ends.
        assert (h.revision, len(h.orders)) == (before, published)
    assert h.revision == before + 1
    assert len(h.orders) == published + 1
    assert h.changes == changes + 1
    assert [e.request_id for e in h.orders[-1].erasures] == [e.request_id for e in erasures]
    assert h.orders[-1].erasures[0].regions_pending == ("eu-west-1", "ap-northeast-1")
    assert h.orders[-1].holds == (hold,)
    h.reopen()
    assert h.registry.orders().erasures == h.orders[-1].erasures
    assert h.desk.holds() == (hold,)


def test_a_batch_that_fails_writes_nothing_and_leaves_the_desk_as_it_was(
    make: Callable[..., Harness],
) -> None:
    h = make(CoordinatorLimits(open_subject_requests_max=2))
    kept = h.desk.erase("cust-0", "before the batch")
    before, published = h.revision, len(h.orders)
    with pytest.raises(FailedPrecondition, match="the limit"), h.desk.batch():
        h.desk.erase("cust-1", "fits")
        h.desk.place_hold(HoldScope.SUBJECT, subject_id="cust-9", reason="case 9")
        h.desk.erase("cust-2", "one too many")
    assert (h.revision, len(h.orders)) == (before, published)
    assert [r.request_id for r in h.desk.list(open_only=True)] == [kept.request_id]
    assert h.desk.holds() == ()
    # The desk goes on from the stored state: the erasure that fitted was never made.
    h.desk.erase("cust-1", "again")
    with pytest.raises(FailedPrecondition, match="do not nest"), h.desk.batch(), h.desk.batch():
        pass
