"""Data-subject rights from the SDK and the CLI against the stand-ins of subject_fakes: erase
(with ALREADY_EXISTS and --wait polling), export (streaming, merging the copies of several
regions, unreachable regions), requests list/show and legal holds: parsing, formatting, exit
codes."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from collections.abc import Iterator

import grpc
import pytest

from domicile.causality import Dot, Version
from domicile.cli import erase as erase_cli
from domicile.cli import export as export_cli
from domicile.cli.export import merge_copies
from domicile.cli.main import build_parser, main
from domicile.cli.output import iso_ms
from domicile.client import AsyncClient, Client, ExportedCopy, ReadVersion, RetryPolicy
from domicile.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from domicile.model import Classification
from domicile.subjects import (
    HoldScope,
    LegalHold,
    RegionReceipt,
    RequestKind,
    RequestStatus,
    SubjectRequest,
    due_ms,
)
from domicile.v1 import subject_pb2 as subpb
from tests.unit.subject_fakes import RECEIVED_MS, SubjectCluster, V, exported

FAST = RetryPolicy(attempts_max=3, backoff_initial_s=0.001, backoff_max_s=0.01)
# Far enough from any clock the tests run under: a due time long past, one far ahead.
LONG_AGO_MS = 1_600_000_000_000
FAR_AHEAD_MS = 4_000_000_000_000


@pytest.fixture
def cluster() -> Iterator[SubjectCluster]:
    fake = SubjectCluster()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def client(cluster: SubjectCluster) -> Iterator[Client]:
    with Client(cluster.coordinator_address, insecure=True, deadline_s=5.0, retry=FAST) as c:
        yield c


def run(capsys, fake: SubjectCluster, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--coordinator", fake.coordinator_address, "--deadline", "5"])
    out, err = capsys.readouterr()
    return code, out, err


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


# -- parsing


def test_erase_and_export_options():
    args = parse("erase", "--subject", "s-1", "--reason", "asked by email")
    assert (args.subject, args.reason, args.subject_jurisdiction) == ("s-1", "asked by email", "")
    assert (args.wait, args.poll_interval, args.json, args.deadline) == (None, 1.0, False, 5.0)
    args = parse(
        "erase", "-s", "s-1", "--reason", "r", "-j", "US-CA", "--wait", "30", "--poll-interval", "0.5"
    )
    assert (args.subject_jurisdiction, args.wait, args.poll_interval) == ("US-CA", 30.0, 0.5)
    args = parse("export", "--subject", "s-1")
    # An export streams every region: its default deadline is the long one.
    assert (args.subject, args.reason, args.out, args.deadline) == ("s-1", "", None, 300.0)
    assert parse("export", "-s", "s-1", "-o", "out.json", "--reason", "r").out == "out.json"


def test_requests_and_hold_options():
    args = parse("requests", "list")
    assert (args.open, args.limit, args.json) == (False, 100, False)
    assert parse("requests", "list", "--open", "--limit", "1000").limit == 1000
    assert parse("requests", "show", "req-0000000001").request_id == "req-0000000001"
    args = parse("hold", "place", "--namespace", "trades", "--key", "t-1", "--reason", "case 7")
    assert (args.subject, args.namespace, args.key, args.reason) == (None, "trades", "t-1", "case 7")
    assert parse("hold", "release", "hold-01", "--reason", "closed").hold_id == "hold-01"
    assert parse("hold", "list", "--json").json


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["erase", "--subject", "s-1"], "the following arguments are required: --reason"),
        (["erase", "--reason", "r"], "the following arguments are required: --subject"),
        (["erase", "-s", "s", "--reason", "r", "--wait", "0"], "must be more than 0 seconds"),
        (["requests", "list", "--limit", "0"], "0 is outside 1..1000"),
        (["requests", "show"], "the following arguments are required: ID"),
        (["hold", "place", "--reason", "r"], "one of the arguments --subject/-s --namespace/-n is required"),
        (["hold", "place", "-s", "a", "-n", "b", "--reason", "r"], "not allowed with argument"),
        (["hold", "place", "-s", "a"], "the following arguments are required: --reason"),
        (["hold", "release", "hold-1"], "the following arguments are required: --reason"),
        (["export"], "the following arguments are required: --subject"),
    ],
)
def test_usage_mistakes_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


# -- the SDK


def test_erase_subject_returns_the_domain_request(cluster, client):
    request = client.erase_subject("s-1", "asked by email", "US-CA")
    assert isinstance(request, SubjectRequest)
    assert request.request_id == "req-0000000001"
    assert (request.kind, request.status) == (RequestKind.ERASURE, RequestStatus.OPEN)
    assert request.regions_pending == ("us-east-1", "eu-west-1", "eu-central-1")
    assert request.due_ms == due_ms(RECEIVED_MS, "US-CA") == RECEIVED_MS + 45 * 86_400_000
    sent = cluster.coordinator.erase_requests[0]
    assert (sent.subject_id, sent.reason, sent.subject_jurisdiction) == ("s-1", "asked by email", "US-CA")
    assert client.subject_request(request.request_id) == request
    with pytest.raises(AlreadyExists, match="already open: req-0000000001"):
        client.erase_subject("s-1", "again")
    with pytest.raises(NotFound, match="no subject request 'req-9'"):
        client.subject_request("req-9")


def test_access_requests_open_list_and_complete(cluster, client):
    opened = client.open_access_request("s-2", subject_jurisdiction="DE")
    assert (opened.kind, opened.status, opened.subject_jurisdiction) == (
        RequestKind.ACCESS,
        RequestStatus.OPEN,
        "DE",
    )
    erasure = client.erase_subject("s-3", "r")
    done = client.complete_access_request(opened.request_id, 12)
    assert (done.status, done.records_exported) == (RequestStatus.COMPLETED, 12)
    assert [r.request_id for r in client.subject_requests()] == [erasure.request_id, opened.request_id]
    assert [r.request_id for r in client.subject_requests(open_only=True, limit=5)] == [erasure.request_id]
    assert cluster.coordinator.list_requests[-1].limit == 5


def test_legal_holds_round_trip(cluster, client):
    by_subject = client.place_hold("subject", subject_id="s-1", reason="case 1")
    by_key = client.place_hold(HoldScope.KEY, namespace="trades", key="t-1", reason="case 2")
    by_namespace = client.place_hold(HoldScope.NAMESPACE, namespace="trades", reason="case 3")
    assert isinstance(by_subject, LegalHold) and by_subject.scope is HoldScope.SUBJECT
    assert (by_key.scope, by_key.namespace, by_key.key) == (HoldScope.KEY, "trades", "t-1")
    assert {h.hold_id for h in client.holds()} == {by_subject.hold_id, by_key.hold_id, by_namespace.hold_id}
    released = client.release_hold(by_key.hold_id, "case closed")
    assert released == by_key
    assert cluster.coordinator.released == [(by_key.hold_id, "case closed")]
    assert len(client.holds()) == 2
    with pytest.raises(NotFound, match="no legal hold"):
        client.release_hold(by_key.hold_id, "again")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.erase_subject("", "r"), "a subject id is required"),
        (lambda c: c.erase_subject("s", "  "), "a reason is required"),
        (lambda c: c.erase_subject("s", "r", "Germany"), "invalid subject jurisdiction 'Germany'"),
        (lambda c: c.erase_subject("s", "r" * 1025), "longer than 1024 characters"),
        (lambda c: c.subject_requests(limit=0), "limit is 0; use 1 to 1000"),
        (lambda c: c.subject_requests(limit=1001), "limit is 1001; use 1 to 1000"),
        (lambda c: c.subject_request(""), "a request id is required"),
        (lambda c: c.complete_access_request("req-1", -1), "0 or more"),
        (lambda c: c.place_hold("everything", reason="r"), "unknown legal hold scope 'everything'"),
        (lambda c: c.place_hold("subject", reason="r"), "a subject id is required"),
        (lambda c: c.place_hold("subject", subject_id="s", namespace="n", reason="r"), "give no namespace"),
        (lambda c: c.place_hold("namespace", reason="r"), "a namespace hold needs a namespace"),
        (lambda c: c.place_hold("namespace", namespace="n", key="k", reason="r"), "give no key"),
        (lambda c: c.place_hold("key", namespace="n", reason="r"), "key is empty"),
        (lambda c: c.place_hold("key", namespace="Bad-Name", key="k", reason="r"), "invalid namespace name"),
        (lambda c: c.place_hold("subject", subject_id="s", reason=""), "a reason is required"),
        (lambda c: c.release_hold("hold-1", ""), "a reason is required"),
        (lambda c: c.export_subject_region("", "s"), "a region name is required"),
        (lambda c: c.export_subject_region("mars", "s"), "unknown region 'mars'"),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(cluster, client, call, message):
    with pytest.raises(InvalidArgument, match=message):
        call(client)
    desk = cluster.coordinator
    assert (desk.requests, desk.hold_table, desk.place_requests) == ({}, {}, [])


def test_export_streams_every_message_with_versions_as_domain_types(cluster, client):
    records = [
        exported("customers", f"c-{i}", "eu-west-1", [V("eu-west-1", i + 1, f"value {i}".encode(), hlc=i)])
        for i in range(5)
    ]
    records.append(
        exported("customers", "hidden", "eu-west-1", [V("eu-west-1", 9, b"secret", redacted=("value",))])
    )
    cluster.give_exports("eu-west-1", records)
    copies = list(client.export_subject_region("eu-west-1", "s-1", "req-0000000007"))
    node = cluster.nodes["eu-west-1"]
    assert node.calls == ["ExportSubject"] and node.export_requests[0].request_id == "req-0000000007"
    assert [c.key for c in copies] == ["c-0", "c-1", "c-2", "c-3", "c-4", "hidden"]
    first = copies[0]
    assert isinstance(first, ExportedCopy) and isinstance(first.versions[0], Version)
    assert (first.region, first.node_id, first.classification) == (
        "eu-west-1",
        "eu-west-1",
        Classification.PERSONAL,
    )
    assert (first.retention_class, first.retention_period_s) == ("user_data", 7 * 365 * 86_400)
    assert first.versions[0].value == b"value 0" and first.versions[0].checksum_ok()
    # A withheld value is listed, marked, never dropped.
    hidden = copies[-1].versions[0]
    assert isinstance(hidden, ReadVersion) and hidden.redacted_fields == ("value",) and hidden.value == b""
    assert list(client.export_subject_region("us-east-1", "s-1")) == []


def test_a_stream_that_breaks_raises_from_the_iterator(cluster, client):
    records = [exported("customers", f"c-{i}", "eu-west-1", [V("eu-west-1", i + 1, b"v")]) for i in range(6)]
    cluster.give_exports("eu-west-1", records)
    cluster.nodes["eu-west-1"].export_break_after = 1
    stream = client.export_subject_region("eu-west-1", "s-1")
    assert [next(stream).key, next(stream).key] == ["c-0", "c-1"]
    with pytest.raises(Unavailable, match="injected broken stream"):
        next(stream)
    # Not retried: it could not resume where it broke.
    assert cluster.nodes["eu-west-1"].calls == ["ExportSubject"]


def test_opening_an_export_is_retried_like_any_call(cluster, client):
    cluster.give_exports("eu-west-1", [exported("customers", "c-1", "eu-west-1", [V("eu-west-1", 1, b"v")])])
    cluster.nodes["eu-west-1"].failures = [grpc.StatusCode.UNAVAILABLE]
    assert [c.key for c in client.export_subject_region("eu-west-1", "s-1")] == ["c-1"]
    assert cluster.nodes["eu-west-1"].calls == ["ExportSubject", "ExportSubject"]


async def test_async_client_has_the_same_calls(cluster):
    cluster.give_exports(
        "eu-west-1",
        [exported("customers", f"c-{i}", "eu-west-1", [V("eu-west-1", i + 1, b"v")]) for i in range(3)],
    )
    async with AsyncClient(cluster.coordinator_address, insecure=True, retry=FAST) as client:
        erasure = await client.erase_subject("s-1", "r", "DE")
        assert (await client.subject_request(erasure.request_id)).regions_pending == erasure.regions_pending
        with pytest.raises(AlreadyExists):
            await client.erase_subject("s-1", "r")
        access = await client.open_access_request("s-1", "copy please")
        copies = [c async for c in await client.export_subject_region("eu-west-1", "s-1", access.request_id)]
        assert [c.key for c in copies] == ["c-0", "c-1", "c-2"]
        done = await client.complete_access_request(access.request_id, len(copies))
        assert done.records_exported == 3
        assert len(await client.subject_requests(open_only=True)) == 1
        hold = await client.place_hold("namespace", namespace="trades", reason="case")
        assert [h.hold_id for h in await client.holds()] == [hold.hold_id]
        assert (await client.release_hold(hold.hold_id, "done")).hold_id == hold.hold_id
        cluster.nodes["eu-west-1"].export_break_after = 1
        stream = await client.export_subject_region("eu-west-1", "s-1")
        with pytest.raises(Unavailable):
            _ = [c async for c in stream]


# -- erase


def test_erase_prints_the_opened_request(capsys, cluster):
    code, out, err = run(
        capsys, cluster, "erase", "--subject", "s-1", "--reason", "asked by email", "-j", "DE"
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "request:           req-0000000001"
    assert "kind:              erasure" in lines
    assert "subject:           s-1" in lines
    assert "jurisdiction:      DE" in lines
    assert f"due:               {iso_ms(due_ms(RECEIVED_MS, 'DE'))}" in lines
    assert "regions pending:   us-east-1, eu-west-1, eu-central-1" in lines
    assert lines[-1] == "receipts:          none yet"


def test_erase_json(capsys, cluster):
    code, out, _ = run(capsys, cluster, "erase", "-s", "s-1", "--reason", "r", "--json")
    doc = json.loads(out)
    assert code == 0
    assert (doc["request_id"], doc["kind"], doc["status"], doc["subject_id"]) == (
        "req-0000000001",
        "erasure",
        "open",
        "s-1",
    )
    assert doc["regions_pending"] == ["us-east-1", "eu-west-1", "eu-central-1"]
    assert doc["due_unix_ms"] == due_ms(RECEIVED_MS, "") and doc["due"] == iso_ms(doc["due_unix_ms"])
    assert (doc["receipts"], doc["completed"]) == ([], None)


def test_an_erasure_already_open_exits_2_naming_it(capsys, cluster):
    assert run(capsys, cluster, "erase", "-s", "s-1", "--reason", "r")[0] == 0
    code, out, err = run(capsys, cluster, "erase", "-s", "s-1", "--reason", "again")
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0].startswith(
        "error: an erasure of this subject is already open: req-0000000001, regions pending"
    )
    assert lines[1] == "open erasure request of s-1: req-0000000001 (domicile requests show req-0000000001)"


@pytest.mark.parametrize(
    ("message", "found"),
    [
        ("an erasure of this subject is already open: req-0001f3c2a9, regions pending: a", "req-0001f3c2a9"),
        ("open request req-00ab.", "req-00ab"),
        ("nothing here", None),
    ],
)
def test_the_open_request_id_is_read_from_the_message(message, found):
    assert erase_cli.request_id_in(message) == found


def test_erase_wait_follows_the_regions_until_completed(capsys, cluster):
    # The request completes after two polls: eu-west-1 reports first, then the other two.
    rid = "req-0000000001"
    desk = cluster.coordinator
    west = cluster.receipt("eu-west-1", {"customers": 3, "orders": 2}, keys_destroyed=2, audit_seq=41)
    east = cluster.receipt("us-east-1", {}, keys_destroyed=0, audit_seq=7)
    central = cluster.receipt(
        "eu-central-1", {"customers": 1}, kept=[("trades", "t-1", "MiFID II record keeping")], audit_seq=12
    )
    code, out, err = _erase_waiting(capsys, cluster, rid, [[west], [west, east, central]])
    assert (code, err) == (0, "")
    assert desk.polls[rid] == 2
    lines = out.splitlines()
    start = lines.index("waiting up to 5s for 3 regions to report")
    assert lines[start + 1 :] == [
        "eu-west-1 reported: erased 5 records (customers 3, orders 2), kept 0, 2 keys destroyed "
        "(node eu-west-1, audit seq 41)",
        "us-east-1 reported: erased 0 records, kept 0, 0 keys destroyed (node us-east-1, audit seq 7)",
        "eu-central-1 reported: erased 1 record (customers 1), kept 1, 1 key destroyed "
        "(node eu-central-1, audit seq 12)",
        f"completed at {iso_ms(RECEIVED_MS + 3_000)}: 3 regions reported, 6 records erased, 1 record kept",
    ]


def _erase_waiting(capsys, cluster: SubjectCluster, rid: str, steps):
    """Runs `erase --wait 5` with the request progressing through `steps` (lists of receipts),
    one per poll."""
    desk = cluster.coordinator
    desk.after_erase = lambda opened: desk.script.update(
        {rid: [cluster.progress(rid, *receipts) for receipts in steps]}
    )
    return run(
        capsys, cluster, "erase", "-s", "s-1", "--reason", "r", "--wait", "5", "--poll-interval", "0.001"
    )


def test_erase_wait_that_runs_out_exits_1_and_json_keeps_stdout_clean(capsys, cluster):
    rid = "req-0000000001"
    west = cluster.receipt("eu-west-1", {"customers": 3})
    desk = cluster.coordinator
    # Every poll sees only eu-west-1 reported.
    desk.after_erase = lambda opened: desk.script.update({rid: [cluster.progress(rid, west)]})
    code, out, err = run(
        capsys,
        cluster,
        "erase",
        "-s",
        "s-1",
        "--reason",
        "r",
        "--wait",
        "0.05",
        "--poll-interval",
        "0.01",
        "--json",
    )
    assert code == 1
    doc = json.loads(out)
    assert (doc["status"], doc["regions_pending"]) == ("open", ["us-east-1", "eu-central-1"])
    assert [r["region"] for r in doc["receipts"]] == ["eu-west-1"]
    assert doc["receipts"][0]["erased"] == {"customers": 3}
    progress = err.splitlines()
    assert progress[0] == "waiting up to 0.05s for 3 regions to report"
    assert progress[1].startswith("eu-west-1 reported: erased 3 records (customers 3)")
    assert progress[-1] == "still open after 0.05s: 1 region reported; waiting for us-east-1, eu-central-1"
    assert desk.polls[rid] >= 1


class _ScriptedClient:
    """Stands in for the Client in wait_for_completion: answers polls from a list."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.polls = 0

    def subject_request(self, request_id):
        self.polls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _request(*receipt_regions: str, completed: bool = False) -> SubjectRequest:
    return SubjectRequest(
        request_id="req-1",
        kind=RequestKind.ERASURE,
        subject_id="s",
        subject_jurisdiction="",
        reason="r",
        received_ms=0,
        due_ms=1,
        status=RequestStatus.COMPLETED if completed else RequestStatus.OPEN,
        receipts=tuple(RegionReceipt(r, r, 0, 0) for r in receipt_regions),
    )


def test_wait_for_completion_with_a_controlled_clock():
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    reported: list[str] = []
    errors: list[str] = []
    client = _ScriptedClient(
        [
            _request("a"),
            Unavailable("coordinator restarting"),
            _request("a", "b"),
            _request("a", "b", "c", completed=True),
        ]
    )
    final = erase_cli.wait_for_completion(
        client,  # type: ignore[arg-type]
        _request(),
        10.0,
        2.0,
        lambda r: reported.append(r.region),
        on_poll_error=lambda e: errors.append(e.message),
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert final.status is RequestStatus.COMPLETED
    assert (reported, errors, sleeps) == (["a", "b", "c"], ["coordinator restarting"], [2.0, 2.0, 2.0, 2.0])
    # The wait ends with one last poll at its end; a non-transient failure is raised.
    now[0] = 0.0
    client = _ScriptedClient([_request(), _request("a")])
    final = erase_cli.wait_for_completion(
        client,
        _request(),
        3.0,
        2.0,
        lambda r: None,
        clock=lambda: now[0],
        sleep=sleep,  # type: ignore[arg-type]
    )
    assert (client.polls, final.status, now[0]) == (2, RequestStatus.OPEN, 3.0)
    with pytest.raises(NotFound):
        erase_cli.wait_for_completion(
            _ScriptedClient([NotFound("gone")]), _request(), 3.0, 1.0, lambda r: None,  # type: ignore[arg-type]
            clock=lambda: now[0] - 3.0, sleep=lambda s: None,
        )  # fmt: skip


# -- requests list and show


def test_requests_list_table_with_overdue_flag(capsys, cluster, client):
    overdue = client.erase_subject("s-old", "r")
    access = client.open_access_request("s-new")
    done = client.open_access_request("s-done")
    client.complete_access_request(done.request_id, 3)
    desk = cluster.coordinator
    desk.requests[overdue.request_id].due_unix_ms = LONG_AGO_MS
    desk.requests[access.request_id].due_unix_ms = FAR_AHEAD_MS
    desk.requests[done.request_id].due_unix_ms = LONG_AGO_MS  # completed: never overdue
    code, out, err = run(capsys, cluster, "requests", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KIND", "SUBJECT", "STATUS", "RECEIVED", "DUE", "OVERDUE", "PENDING"]
    received = iso_ms(RECEIVED_MS)
    assert lines[1].split() == [
        done.request_id,
        "access",
        "s-done",
        "completed",
        received,
        iso_ms(LONG_AGO_MS),
        "-",
        "-",
    ]
    assert lines[2].split() == [
        access.request_id,
        "access",
        "s-new",
        "open",
        received,
        iso_ms(FAR_AHEAD_MS),
        "-",
        "-",
    ]
    assert lines[3].split() == [
        overdue.request_id, "erasure", "s-old", "open", received, iso_ms(LONG_AGO_MS), "yes",
        "us-east-1,eu-west-1,eu-central-1",
    ]  # fmt: skip
    assert lines[4] == "1 request overdue"
    code, out, _ = run(capsys, cluster, "requests", "list", "--open", "--limit", "7", "--json")
    doc = json.loads(out)
    assert [(r["request_id"], r["overdue"]) for r in doc["requests"]] == [
        (access.request_id, False),
        (overdue.request_id, True),
    ]
    assert (desk.list_requests[-1].open_only, desk.list_requests[-1].limit) == (True, 7)


def test_requests_list_says_when_there_are_none(capsys, cluster):
    assert run(capsys, cluster, "requests", "list")[1] == "no subject requests\n"
    assert run(capsys, cluster, "requests", "list", "--open")[1] == "no open subject requests\n"


def test_requests_show_prints_every_receipt(capsys, cluster, client):
    request = client.erase_subject("s-1", "asked by email", "DE")
    west = cluster.receipt("eu-west-1", {"customers": 3, "orders": 2}, keys_destroyed=2, audit_seq=41)
    central = cluster.receipt(
        "eu-central-1", {"customers": 1}, kept=[("trades", "t-1", "MiFID II record keeping")], audit_seq=12
    )
    cluster.coordinator.requests[request.request_id] = cluster.progress(request.request_id, west, central)
    cluster.coordinator.requests[request.request_id].due_unix_ms = FAR_AHEAD_MS
    code, out, err = run(capsys, cluster, "requests", "show", request.request_id)
    assert (code, err) == (0, "")
    started, completed = iso_ms(RECEIVED_MS + 1_000), iso_ms(RECEIVED_MS + 2_000)
    assert out.splitlines() == [
        f"request:           {request.request_id}",
        "kind:              erasure",
        "subject:           s-1",
        "jurisdiction:      DE",
        "reason:            asked by email",
        "status:            open",
        f"received:          {iso_ms(RECEIVED_MS)}",
        f"due:               {iso_ms(FAR_AHEAD_MS)}",
        "regions pending:   us-east-1",
        "receipts (2 regions):",
        f"  eu-west-1  node eu-west-1  started {started}  completed {completed}  audit seq 41",
        "    erased:         5 records (customers 3, orders 2)",
        "    keys destroyed: 2",
        "    kept:           0 records",
        f"  eu-central-1  node eu-central-1  started {started}  completed {completed}  audit seq 12",
        "    erased:         1 record (customers 1)",
        "    keys destroyed: 1",
        "    kept:           1 record",
        "      trades/t-1: MiFID II record keeping",
    ]
    cluster.coordinator.requests[request.request_id].due_unix_ms = LONG_AGO_MS
    code, out, _ = run(capsys, cluster, "requests", "show", request.request_id, "--json")
    doc = json.loads(out)
    assert doc["overdue"] is True
    assert doc["receipts"][1] == {
        "region": "eu-central-1",
        "node_id": "eu-central-1",
        "started_unix_ms": RECEIVED_MS + 1_000,
        "started": started,
        "completed_unix_ms": RECEIVED_MS + 2_000,
        "completed": completed,
        "erased": {"customers": 1},
        "erased_total": 1,
        "kept": [{"namespace": "trades", "key": "t-1", "reason": "MiFID II record keeping"}],
        "kept_total": 1,
        "keys_destroyed": 1,
        "audit_seq": 12,
        "released_hold_id": "",
    }
    assert doc["release_receipts"] == []
    code, out, _ = run(capsys, cluster, "requests", "show", request.request_id)
    assert f"status:            open, OVERDUE (was due {iso_ms(LONG_AGO_MS)})" in out.splitlines()


def test_requests_show_lists_what_was_erased_at_a_hold_release(capsys, cluster, client):
    request = client.erase_subject("s-1", "asked by email", "DE")
    kept = [("customers", "c-1", "legal hold hold-00000000a1 (subject s-1): case 7")]
    west = cluster.receipt("eu-west-1", {}, kept=kept, keys_destroyed=0, audit_seq=41)
    state = cluster.progress(request.request_id, west)
    at_release = cluster.receipt("eu-west-1", {"customers": 1}, keys_destroyed=1, audit_seq=57)
    at_release.released_hold_id = "hold-00000000a1"
    at_release.kept_total = 2
    at_release.completed_unix_ms = RECEIVED_MS + 9_000
    state.release_receipts.append(at_release)
    cluster.coordinator.requests[request.request_id] = state
    code, out, err = run(capsys, cluster, "requests", "show", request.request_id)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    # The erasure's own receipt stays as it was; the release's follows it.
    at = lines.index("erased at hold releases (1 receipt):")
    assert lines[at - 2 : at] == ["    kept:           1 record", f"      customers/c-1: {kept[0][2]}"]
    assert lines[at + 1 :] == [
        f"  eu-west-1  node eu-west-1  at the release of hold-00000000a1  "
        f"completed {iso_ms(RECEIVED_MS + 9_000)}  audit seq 57",
        "    erased:         1 record (customers 1)",
        "    keys destroyed: 1",
        "    still kept:     2 records",
    ]
    code, out, _ = run(capsys, cluster, "requests", "show", request.request_id, "--json")
    doc = json.loads(out)
    assert [r["released_hold_id"] for r in doc["receipts"]] == [""]
    (released,) = doc["release_receipts"]
    assert {k: released[k] for k in ("region", "released_hold_id", "erased", "kept_total", "audit_seq")} == {
        "region": "eu-west-1",
        "released_hold_id": "hold-00000000a1",
        "erased": {"customers": 1},
        "kept_total": 2,
        "audit_seq": 57,
    }
    assert released["completed"] == iso_ms(RECEIVED_MS + 9_000)


def test_requests_show_of_a_completed_access_request(capsys, cluster, client):
    request = client.open_access_request("s-1", "copy please")
    client.complete_access_request(request.request_id, 4)
    code, out, _ = run(capsys, cluster, "requests", "show", request.request_id)
    lines = out.splitlines()
    assert code == 0
    assert "status:            completed" in lines
    assert f"completed:         {iso_ms(RECEIVED_MS + 60_000)}" in lines
    assert "regions pending:   none" in lines and lines[-1] == "records exported:  4"


def test_requests_show_of_an_unknown_id_exits_2(capsys, cluster):
    code, out, err = run(capsys, cluster, "requests", "show", "req-00000000ff")
    assert (code, out) == (2, "")
    assert err == "error: no subject request 'req-00000000ff'\n"


# -- holds


def test_hold_place_list_and_release(capsys, cluster):
    code, out, _ = run(capsys, cluster, "hold", "place", "--subject", "s-1", "--reason", "case 1")
    assert (code, out) == (0, "placed legal hold hold-0000000001 on subject s-1: case 1\n")
    code, out, _ = run(capsys, cluster, "hold", "place", "-n", "trades", "--reason", "case 2")
    assert out == "placed legal hold hold-0000000002 on namespace trades: case 2\n"
    code, out, _ = run(
        capsys, cluster, "hold", "place", "-n", "trades", "-k", "t-1", "--reason", "case 3", "--json"
    )
    doc = json.loads(out)
    assert (doc["hold_id"], doc["scope"], doc["namespace"], doc["key"]) == (
        "hold-0000000003",
        "key",
        "trades",
        "t-1",
    )
    assert doc["placed"] == iso_ms(RECEIVED_MS)
    scopes = [r.scope for r in cluster.coordinator.place_requests]
    assert scopes == [
        subpb.LEGAL_HOLD_SCOPE_SUBJECT,
        subpb.LEGAL_HOLD_SCOPE_NAMESPACE,
        subpb.LEGAL_HOLD_SCOPE_KEY,
    ]

    code, out, _ = run(capsys, cluster, "hold", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "SCOPE", "COVERS", "PLACED", "REASON"]
    assert lines[1].split() == [
        "hold-0000000001",
        "subject",
        "subject",
        "s-1",
        iso_ms(RECEIVED_MS),
        "case",
        "1",
    ]
    assert lines[3].split() == [
        "hold-0000000003",
        "key",
        "record",
        "trades/t-1",
        iso_ms(RECEIVED_MS),
        "case",
        "3",
    ]

    code, out, _ = run(capsys, cluster, "hold", "release", "hold-0000000002", "--reason", "closed")
    assert (code, out) == (
        0,
        "released legal hold hold-0000000002 on namespace trades (placed for: case 2)\n",
    )
    assert cluster.coordinator.released == [("hold-0000000002", "closed")]
    code, out, _ = run(capsys, cluster, "hold", "list", "--json")
    assert [h["hold_id"] for h in json.loads(out)["holds"]] == ["hold-0000000001", "hold-0000000003"]
    code, out, err = run(capsys, cluster, "hold", "release", "hold-0000000002", "--reason", "again")
    assert (code, err) == (2, "error: no legal hold 'hold-0000000002' in force\n")


def test_hold_list_when_there_are_none(capsys, cluster):
    assert run(capsys, cluster, "hold", "list") == (0, "no legal holds in force\n", "")


def test_a_key_without_a_namespace_is_refused(capsys, cluster):
    code, out, err = run(capsys, cluster, "hold", "place", "-s", "s-1", "-k", "t-1", "--reason", "r")
    assert (code, out) == (2, "")
    assert err == "error: --key needs --namespace: a key hold covers one record of a namespace\n"
    assert cluster.coordinator.place_requests == []


# -- export


def _give_three_regions(cluster: SubjectCluster) -> None:
    """c-1 in both EU regions (the same version; Frankfurt withholds the value, Dublin also has
    a newer one not replicated yet); a binary record only in us-east-1; a held trade."""
    v1 = V("eu-west-1", 1, "Grüße".encode(), hlc=(1_790_000_000_000 << 16))
    v2 = V("eu-west-1", 2, b"newer", hlc=(1_790_000_000_500 << 16))
    home = "home region (GDPR Art. 6(1)(b))"
    trade = V("eu-west-1", 3, b"buy 10")
    cluster.give_exports(
        "eu-west-1",
        [
            exported("customers", "c-1", "eu-west-1", [v1, v2], legal_basis=home),
            exported(
                "trades", "t-1", "eu-west-1", [trade], classification=Classification.FINANCIAL,
                retention_class="transaction_data", retention_period_s=3 * 365 * 86_400,
                hold_reason="legal hold hold-0000000001 on the subject: case 7",
            ),
        ],
    )  # fmt: skip
    cluster.give_exports(
        "eu-central-1",
        [
            exported(
                "customers", "c-1", "eu-central-1",
                [V("eu-west-1", 1, "Grüße".encode(), hlc=(1_790_000_000_000 << 16), redacted=("value",))],
                legal_basis="EU replica (GDPR, no transfer)",
            )
        ],
    )  # fmt: skip
    cluster.give_exports(
        "us-east-1",
        [
            exported(
                "devices",
                "d-1",
                "us-east-1",
                [V("us-east-1", 1, b"\xff\x00\x01", content_type="")],
                classification=Classification.INTERNAL,
            )
        ],
    )


def test_export_merges_the_copies_of_every_region_and_completes_the_request(capsys, cluster, tmp_path):
    _give_three_regions(cluster)
    out_file = tmp_path / "s-1.json"
    code, out, err = run(
        capsys, cluster, "export", "-s", "s-1", "-j", "DE", "--reason", "copy please", "--out", str(out_file)
    )
    assert (code, err) == (0, "")
    assert out == (
        f"exported 3 records of s-1 from 3 regions to {out_file}; access request req-0000000001 completed\n"
    )
    assert stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    doc = json.loads(out_file.read_text())
    assert (doc["request_id"], doc["subject_id"], doc["subject_jurisdiction"]) == (
        "req-0000000001",
        "s-1",
        "DE",
    )
    assert (doc["complete"], doc["regions_unreachable"], doc["records_total"]) == (True, [], 3)
    assert doc["regions_answered"] == ["us-east-1", "eu-west-1", "eu-central-1"]
    assert doc["generated_at"] == iso_ms(doc["generated_unix_ms"])
    assert [(r["namespace"], r["key"]) for r in doc["records"]] == [
        ("customers", "c-1"),
        ("devices", "d-1"),
        ("trades", "t-1"),
    ]

    c1, d1, t1 = doc["records"]
    assert c1["regions"] == ["eu-west-1", "eu-central-1"]
    assert c1["classification"] == "personal"
    assert (c1["retention_class"], c1["retention_period_seconds"]) == ("user_data", 7 * 365 * 86_400)
    assert c1["legal_basis"] == {
        "eu-west-1": "home region (GDPR Art. 6(1)(b))",
        "eu-central-1": "EU replica (GDPR, no transfer)",
    }
    assert (c1["hold"], c1["hold_regions"]) == (None, [])
    # The version both regions hold is one entry: the value Dublin gave, Frankfurt's withholding noted.
    first, newer = c1["versions"]
    assert (first["dot"], first["value"], first["value_encoding"]) == ("eu-west-1:1", "Grüße", "utf-8")
    assert (first["regions"], first["redacted_in"], first["redacted_fields"]) == (
        ["eu-west-1", "eu-central-1"],
        ["eu-central-1"],
        ["value"],
    )
    assert first["written"] == iso_ms(1_790_000_000_000)
    assert (newer["dot"], newer["value"], newer["regions"], newer["redacted_in"]) == (
        "eu-west-1:2",
        "newer",
        ["eu-west-1"],
        [],
    )

    (binary,) = d1["versions"]
    assert (binary["value_encoding"], base64.b64decode(binary["value"])) == ("base64", b"\xff\x00\x01")
    assert (d1["regions"], d1["classification"]) == (["us-east-1"], "internal")

    assert t1["hold"] == "legal hold hold-0000000001 on the subject: case 7"
    assert (t1["hold_regions"], t1["classification"], t1["retention_class"]) == (
        ["eu-west-1"],
        "financial",
        "transaction_data",
    )

    desk = cluster.coordinator
    assert desk.completions == [("req-0000000001", 3)]
    assert desk.requests["req-0000000001"].reason == "copy please"
    assert {n.export_requests[0].request_id for n in cluster.nodes.values()} == {"req-0000000001"}


def test_export_to_stdout_is_one_json_document(capsys, cluster):
    _give_three_regions(cluster)
    code, out, err = run(capsys, cluster, "export", "--subject", "s-1")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["records_total"] == 3 and doc["complete"]
    assert cluster.coordinator.completions == [("req-0000000001", 3)]


def test_an_unreachable_region_leaves_the_request_open_and_exits_2(capsys, cluster, tmp_path):
    _give_three_regions(cluster)
    cluster.nodes["us-east-1"].failures = [grpc.StatusCode.UNAVAILABLE] * 10
    out_file = tmp_path / "partial.json"
    code, out, err = run(capsys, cluster, "export", "-s", "s-1", "--out", str(out_file))
    assert (code, out) == (2, "")
    doc = json.loads(out_file.read_text())
    assert doc["complete"] is False
    assert doc["regions_answered"] == ["eu-west-1", "eu-central-1"]
    assert [u["region"] for u in doc["regions_unreachable"]] == ["us-east-1"]
    assert "injected UNAVAILABLE" in doc["regions_unreachable"][0]["error"]
    assert [(r["namespace"], r["key"]) for r in doc["records"]] == [("customers", "c-1"), ("trades", "t-1")]
    lines = err.splitlines()
    assert lines[0].startswith("warning: us-east-1 could not be read: ")
    assert lines[-1] == (
        f"error: export incomplete: could not read us-east-1; access request req-0000000001 stays open "
        f"(the document to {out_file} says what was read)"
    )
    assert cluster.coordinator.completions == []
    assert cluster.coordinator.requests["req-0000000001"].status == subpb.SUBJECT_REQUEST_STATUS_OPEN


def test_a_region_whose_stream_breaks_counts_as_not_read(capsys, cluster):
    records = [exported("customers", f"c-{i}", "eu-west-1", [V("eu-west-1", i + 1, b"v")]) for i in range(5)]
    cluster.give_exports("eu-west-1", records)
    cluster.nodes["eu-west-1"].export_break_after = 2
    code, out, err = run(capsys, cluster, "export", "-s", "s-1")
    doc = json.loads(out)
    assert code == 2
    (broken,) = doc["regions_unreachable"]
    assert broken["region"] == "eu-west-1"
    assert broken["error"].startswith("the export broke after 4 records: node eu-west-1 (eu-west-1) at ")
    assert broken["error"].endswith(": injected broken stream")
    # What was read before the break is not passed off as the region's records.
    assert doc["records"] == [] and doc["regions_answered"] == ["us-east-1", "eu-central-1"]
    assert "warning: eu-west-1 could not be read: the export broke after 4 records" in err


def test_export_of_a_subject_nobody_holds_completes_with_zero(capsys, cluster):
    code, out, _ = run(capsys, cluster, "export", "-s", "s-none")
    assert code == 0 and json.loads(out)["records"] == []
    assert cluster.coordinator.completions == [("req-0000000001", 0)]


def test_export_refuses_a_bad_subject_before_opening_a_request(capsys, cluster):
    code, _, err = run(capsys, cluster, "export", "-s", "x" * 300)
    assert (code, err) == (2, "error: subject id is longer than 256 bytes\n")
    assert cluster.coordinator.requests == {}


def _copy(region: str, *versions: ReadVersion, namespace: str = "ns", key: str = "k") -> ExportedCopy:
    return ExportedCopy(namespace, key, region, Classification.PERSONAL, tuple(versions))


def _version(node: str, counter: int, value: bytes, **kwargs) -> ReadVersion:
    return ReadVersion(dot=Dot(node, counter), value=value, hlc=counter, **kwargs)


def test_merge_never_drops_a_copy_that_disagrees():
    # Replication never gives one dot two values; if a region does, both are exported.
    merged = merge_copies(
        [
            _copy("b", _version("n", 1, b"x")),
            _copy("a", _version("n", 1, b"y")),
            _copy("c", _version("n", 1, b"x")),
        ],
        ["a", "b", "c"],
    )
    (record,) = merged
    assert record["regions"] == ["a", "b", "c"]
    assert [(v["value"], v["regions"]) for v in record["versions"]] == [("y", ["a"]), ("x", ["b", "c"])]


def test_merge_prefers_the_fullest_copy_and_keeps_a_value_only_withheld():
    merged = merge_copies(
        [
            _copy("a", _version("n", 1, b"", redacted_fields=("value", "subject_id"))),
            _copy("b", _version("n", 1, b"v", redacted_fields=("subject_id",))),
            _copy("c", _version("n", 1, b"v", subject_id="s")),
            _copy("a", _version("n", 2, b"", redacted_fields=("value",)), key="only-withheld"),
        ],
        ["a", "b", "c"],
    )
    full, withheld = merged
    (v,) = full["versions"]
    assert (v["value"], v["regions"], v["redacted_in"], v["redacted_fields"]) == (
        "v",
        ["a", "b", "c"],
        ["a", "b"],
        ["subject_id", "value"],
    )
    (w,) = withheld["versions"]
    assert (w["value"], w["value_encoding"], w["regions"]) == (None, "redacted", ["a"])


def test_merge_takes_the_strictest_classification_of_disagreeing_copies():
    copies = [
        ExportedCopy("ns", "k", "a", Classification.PERSONAL, (_version("n", 1, b"v"),)),
        ExportedCopy("ns", "k", "b", Classification.SENSITIVE_PERSONAL, (_version("n", 1, b"v"),)),
    ]
    assert merge_copies(copies)[0]["classification"] == "sensitive_personal"


def test_a_long_export_reports_progress_and_a_region_over_the_limit_is_not_read(cluster, client):
    records = [exported("customers", f"c-{i}", "eu-west-1", [V("eu-west-1", i + 1, b"v")]) for i in range(5)]
    cluster.give_exports("eu-west-1", records)
    err = io.StringIO()
    done = export_cli.read_region(client, "eu-west-1", "s-1", "req-1", 5.0, export_cli.Progress(err, every=2))
    assert (done.answered, len(done.copies)) == (True, 5)
    assert err.getvalue().splitlines() == [
        "export: eu-west-1: 2 records read",
        "export: eu-west-1: 4 records read",
        "export: eu-west-1: done, 5 records",
    ]
    err = io.StringIO()
    over = export_cli.read_region(
        client, "eu-west-1", "s-1", "req-1", 5.0, export_cli.Progress(err, every=100), copies_max=3
    )
    assert (over.answered, over.copies) == (False, [])
    assert over.error == "holds more than 3 records of the subject; the export stops there"
    assert err.getvalue() == f"warning: eu-west-1 could not be read: {over.error}\n"


def test_an_unwritable_out_file_leaves_the_request_open(capsys, cluster, tmp_path):
    code, out, err = run(
        capsys, cluster, "export", "-s", "s-1", "--out", str(tmp_path / "missing" / "s.json")
    )
    assert (code, out) == (2, "")
    assert err.startswith(f"error: cannot write --out {tmp_path / 'missing' / 's.json'}: ")
    assert cluster.coordinator.completions == []
    assert list(tmp_path.iterdir()) == []
