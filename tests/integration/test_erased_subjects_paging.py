"""The cluster's permanent list of erased subjects, past what one message carries, with a real
coordinator and a real node (mutual TLS).

The list came whole in the RegisterNode answer; past some tens of thousands of erased subjects
that answer outgrew the 4 MiB a node receives and the node could not join. A node now reads it
in pages (ListErasedSubjects) and adopts it whole. The bulk of the list is written straight into
the coordinator's store, which takes a second; a few erasures go the public way.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from coordinator.store import SubjectChanges
from domicile.audit import subject_hash
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.subjects import RegionReceipt, RequestKind, RequestStatus, SubjectRequest
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.wire.erased_subjects import ErasedListRead
from domicile.wire.limits import (
    ERASED_SUBJECTS_IN_REGISTRATION_MAX,
    ERASED_SUBJECTS_PAGE_DEFAULT,
    ERASED_SUBJECTS_PAGE_MAX,
)
from node.coordinator_link import CoordinatorLink
from node.lifecycle.erased_list_store import CHUNK_ENTRIES, load_erased_list
from tests.support.cluster import LocalCluster, eventually

# What a gRPC client receives by default (grpc.max_receive_message_length), as a node does from
# the coordinator.
GRPC_RECEIVE_BYTES_DEFAULT = 4 * 1024 * 1024
BULK = 50_000
REGION = "eu-west-1"
# A region with a registered node that never runs: an erasure waits for it, so it stays open.
SILENT = "eu-central-1"
RPC_TIMEOUT_S = 10.0


def bulk_erasures(count: int, now_ms: int) -> tuple[SubjectRequest, ...]:
    """Completed erasure requests, as the desk stores them when every region has reported."""
    return tuple(
        SubjectRequest(
            request_id=f"req-f{n:09x}",
            kind=RequestKind.ERASURE,
            subject_id=f"bulk-{n:06d}",
            subject_jurisdiction="DE",
            reason="bulk",
            received_ms=now_ms,
            due_ms=now_ms + 86_400_000,
            status=RequestStatus.COMPLETED,
            completed_ms=now_ms,
        )
        for n in range(count)
    )


def node_stub(
    cluster: LocalCluster, region: str, node_id: str = ""
) -> tuple[grpc.aio.Channel, cpb_grpc.CoordinatorServiceStub]:
    channel = cluster.channel_as_node(region, cluster.coordinator_address, node_id)
    return channel, cpb_grpc.CoordinatorServiceStub(channel)


async def test_a_node_joins_and_knows_every_subject_of_a_list_no_message_carries(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [REGION])
    try:
        await cluster.start_coordinator()
        coordinator = cluster.coordinator
        assert coordinator is not None
        # The public way: no node has registered yet, so each erasure completes at once.
        async with cluster.async_client() as dpo:
            public = [await dpo.erase_subject(f"public-{n}", "the customer asked", "DE") for n in range(3)]
        assert all(r.status is RequestStatus.COMPLETED for r in public)
        store = coordinator._store
        assert store is not None
        store.save_subjects(SubjectChanges(requests=bulk_erasures(BULK, public[-1].completed_ms)))
        key = store.erased_subjects_key()
        subjects = {f"public-{n}": public[n].request_id for n in range(3)}
        subjects.update({r.subject_id: r.request_id for r in bulk_erasures(BULK, 0)})
        expected = {subject_hash(key, s): rid for s, rid in subjects.items()}
        assert len(expected) == BULK + 3

        # Negative control: whole, the list makes a registration answer larger than a node takes.
        whole = cpb.RegisterNodeResponse(
            erased_subjects_key=key,
            erased_subjects=[cpb.ErasedSubject(subject_hash=h, request_id=r) for h, r in expected.items()],
        )
        assert whole.ByteSize() > GRPC_RECEIVE_BYTES_DEFAULT

        # A node that does not page the list is refused before it is registered, not sent a part.
        channel, stub = node_stub(cluster, REGION)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RegisterNode(
                    cpb.RegisterNodeRequest(node_id=REGION, region=REGION, address="127.0.0.1:9"),
                    timeout=RPC_TIMEOUT_S,
                )
        finally:
            await channel.close()
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        details = refused.value.details() or ""
        assert f"{BULK + 3} entries" in details and "ListErasedSubjects" in details
        assert coordinator.registry.topology().nodes == ()

        node = await cluster.start_node(REGION)

        async def joined() -> bool:
            return node.link is not None and node.link.connected

        await eventually(joined, 60.0, "the node registered")
        assert node.eraser.erased_key == key
        assert node.eraser.erased_list == expected

        # Kept in its store, in chunks (more than one meta value holds), for a restart or a restore.
        assert BULK > CHUNK_ENTRIES

        async def stored() -> bool:
            return load_erased_list(node.engine) == (key, expected)

        await eventually(stored, 30.0, "the node stored the list")
        # Erasures win: the last subject of the bulk and one erased the public way are refused.
        for subject, request_id in [
            (f"bulk-{BULK - 1:06d}", subjects[f"bulk-{BULK - 1:06d}"]),
            ("public-1", public[1].request_id),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as erased:
                await cluster.put(
                    REGION,
                    "customers_eu",
                    f"k-{subject}",
                    b"x",
                    subject_id=subject,
                    subject_jurisdiction="DE",
                )
            assert erased.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert request_id in (erased.value.details() or "")
    finally:
        await cluster.stop()


async def list_page(
    stub: cpb_grpc.CoordinatorServiceStub, after: str = "", limit: int = 0
) -> cpb.ListErasedSubjectsResponse:
    page: cpb.ListErasedSubjectsResponse = await stub.ListErasedSubjects(
        cpb.ListErasedSubjectsRequest(after_request_id=after, limit=limit), timeout=RPC_TIMEOUT_S
    )
    return page


async def test_pages_bad_input_callers_and_a_completion_behind_the_reader(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [REGION, SILENT])
    try:
        await cluster.start_coordinator()
        coordinator = cluster.coordinator
        assert coordinator is not None
        desk = coordinator.desk
        channel, stub = node_stub(cluster, REGION)
        try:
            # Nothing erased yet: one empty page, no key.
            empty = await list_page(stub)
            assert (empty.erased_subjects_key, list(empty.erased_subjects)) == (b"", [])
            assert (empty.next_after_request_id, empty.erased_total) == ("", 0)

            # A registered region that never reports keeps an erasure open.
            coordinator.registry.register(SILENT, SILENT, "127.0.0.1:9", "")
            held_open = desk.erase("subject-open", "asked", "DE")
            done = []
            for n in range(3):
                request = desk.erase(f"subject-{n}", "asked", "DE")
                done.append(desk.report_erasure(request.request_id, RegionReceipt(SILENT, SILENT, 1, 2)))
            key = coordinator._store.erased_subjects_key() if coordinator._store else b""

            # Pages of one: the list in the order requests were opened, a cursor to the next page.
            first = await list_page(stub, limit=1)
            assert [e.request_id for e in first.erased_subjects] == [done[0].request_id]
            assert first.erased_subjects[0].subject_hash == subject_hash(key, "subject-0")
            assert (first.erased_subjects_key, first.erased_total) == (key, 3)
            assert first.next_after_request_id == done[0].request_id

            # The open erasure completes behind the reader: the read so far cannot be whole.
            read = ErasedListRead()
            after = read.add(first)
            desk.report_erasure(held_open.request_id, RegionReceipt(SILENT, SILENT, 1, 2))
            while after:
                after = read.add(await list_page(stub, after, limit=1))
            assert not read.whole()
            assert held_open.request_id not in {rid for _, rid in read.entries()}
            # Read again from the start, it is.
            again = ErasedListRead()
            after = again.add(await list_page(stub, limit=1))
            while after:
                after = again.add(await list_page(stub, after, limit=1))
            assert again.whole()
            assert sorted(again.entries()) == sorted(
                (subject_hash(key, s), r.request_id)
                for s, r in [("subject-open", held_open), *((f"subject-{n}", done[n]) for n in range(3))]
            )
            whole = await list_page(stub)
            assert whole.next_after_request_id == "" and len(whole.erased_subjects) == whole.erased_total == 4

            # Bad input: INVALID_ARGUMENT saying what is allowed; nothing changes.
            access = desk.open_access("subject-x", "DE", "asked")
            still_open = desk.erase("subject-y", "asked", "DE")
            bad = [
                (cpb.ListErasedSubjectsRequest(limit=ERASED_SUBJECTS_PAGE_MAX + 1), "1 to 10000"),
                (cpb.ListErasedSubjectsRequest(limit=2**32 - 1), f"or 0 for {ERASED_SUBJECTS_PAGE_DEFAULT}"),
                (
                    cpb.ListErasedSubjectsRequest(after_request_id="bogus"),
                    "next_after_request_id of the previous page",
                ),
                (cpb.ListErasedSubjectsRequest(after_request_id="req-" + "0" * 10), "not on the list"),
                (cpb.ListErasedSubjectsRequest(after_request_id=access.request_id), "not on the list"),
                (cpb.ListErasedSubjectsRequest(after_request_id=still_open.request_id), "not on the list"),
            ]
            changes = coordinator._store.changes() if coordinator._store else -1
            for message, text in bad:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ListErasedSubjects(message, timeout=RPC_TIMEOUT_S)
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, message
                assert text in (refused.value.details() or ""), refused.value.details()
            assert coordinator._store is not None and coordinator._store.changes() == changes
            assert (await list_page(stub)) == whole

            # A node that does not page the list gets it whole at registration while it is short.
            registered = await stub.RegisterNode(
                cpb.RegisterNodeRequest(node_id=REGION, region=REGION, address="127.0.0.1:9"),
                timeout=RPC_TIMEOUT_S,
            )
            assert registered.erased_subjects_key == key
            assert list(registered.erased_subjects) == list(whole.erased_subjects)
            # One that pages it gets the key only.
            paging = await stub.RegisterNode(
                cpb.RegisterNodeRequest(
                    node_id=REGION, region=REGION, address="127.0.0.1:9", lists_erased_subjects=True
                ),
                timeout=RPC_TIMEOUT_S,
            )
            assert (paging.erased_subjects_key, list(paging.erased_subjects)) == (key, [])
        finally:
            await channel.close()

        # Only nodes: every client role is refused, whatever it may do elsewhere.
        assert cluster.pki is not None
        for name, roles in [
            ("dpo-1", (Role.DPO,)),
            ("app-1", (Role.APP,)),
            ("ops-1", (Role.OPERATOR, Role.AUDITOR)),
        ]:
            client = Dialer.mutual_tls(cluster.pki.client(name, roles)).channel(cluster.coordinator_address)
            try:
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await list_page(cpb_grpc.CoordinatorServiceStub(client))
                assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED, name
            finally:
                await client.close()
    finally:
        await cluster.stop()


def test_a_registration_answer_at_its_bound_stays_far_under_what_a_node_receives() -> None:
    """The bound of the list in a registration answer (for a node that does not page it) and the
    largest page are both well under the 4 MiB a gRPC client takes by default."""
    entry = cpb.ErasedSubject(subject_hash="f" * 64, request_id="req-" + "f" * 10)
    answer = cpb.RegisterNodeResponse(
        topology_revision=2**63,
        heartbeat_interval_ms=2**31,
        erased_subjects_key=b"k" * 32,
        erased_subjects=[entry] * ERASED_SUBJECTS_IN_REGISTRATION_MAX,
        coordinator_unix_ms=2**63,
    )
    assert answer.ByteSize() < GRPC_RECEIVE_BYTES_DEFAULT * 0.7
    page = cpb.ListErasedSubjectsResponse(
        erased_subjects_key=b"k" * 32,
        erased_subjects=[entry] * ERASED_SUBJECTS_PAGE_MAX,
        next_after_request_id=entry.request_id,
        erased_total=2**63,
    )
    assert page.ByteSize() < GRPC_RECEIVE_BYTES_DEFAULT / 4


class _OlderCoordinator(cpb_grpc.CoordinatorServiceServicer):
    """A coordinator from before ListErasedSubjects: the base servicer answers UNIMPLEMENTED."""


async def test_a_node_takes_the_list_from_registration_when_the_coordinator_predates_paging() -> None:
    # A coordinator that predates ListErasedSubjects sent the list whole in its registration
    # answer; the node then takes it from there.
    server = grpc.aio.server()
    cpb_grpc.add_CoordinatorServiceServicer_to_server(_OlderCoordinator(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = cpb_grpc.CoordinatorServiceStub(channel)
            link = CoordinatorLink.__new__(CoordinatorLink)
            link.rpc_deadline_s = RPC_TIMEOUT_S
            registered = cpb.RegisterNodeResponse(
                erased_subjects_key=b"k" * 32,
                erased_subjects=[cpb.ErasedSubject(subject_hash="ab" * 32, request_id="req-1")],
            )
            key, erased = await link._read_erased_list(stub, registered)
            assert (key, erased) == (b"k" * 32, [("ab" * 32, "req-1")])
    finally:
        await server.stop(None)
