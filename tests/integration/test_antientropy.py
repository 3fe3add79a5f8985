"""Anti-entropy and the consistency check between in-process nodes on real sockets: a write only
one replica holds reaches the others in scope, never a region the policy keeps it out of (at
either end), a node restored from an old copy of its store gets its later writes back from a
peer, siblings merge as they do in streaming, and only nodes in scope may call."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from domicile import errors
from domicile.audit import AuditEntry
from domicile.causality import CausalContext, Dot, Mutation, Version, sha256
from domicile.cli.main import main
from domicile.model import Classification
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from domicile.wire.records import mutation_to_pb
from node.daemon import Node
from node.replication import entropy
from tests.support.cluster import NAMESPACES, LocalCluster, eventually
from tests.support.packs import sample_pack, with_fact

REGIONS = ["eu-west-1", "eu-central-1", "us-east-1"]
CUSTOMERS = {"name": "customers", "regions": "global", "classification": "personal"}
DPF = ["destinations", "us-east-1", "recipient", "dpf_certified"]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Three regions under the sample pack without the US's DPF certification: EU personal
    data may be in both EU regions and never in us-east-1. Rounds run only when a test asks."""
    pack = with_fact(sample_pack(), "2026-11-27.no-dpf", DPF, False)
    c = LocalCluster(tmp_path, REGIONS, pack=pack, namespaces=[*NAMESPACES, CUSTOMERS])
    c.node_overrides["antientropy_interval_s"] = 0
    await c.start_linked()
    try:
        yield c
    finally:
        await c.stop()


def ghost_write(
    node: Node,
    namespace: str,
    key: str,
    value: bytes,
    *,
    origin: str = "ghost",
    counter: int = 1,
    **facts: str,
) -> Mutation:
    version = Version(
        dot=Dot(origin, counter),
        value=value,
        hlc=node.clock.now(),
        subject_id=facts.get("subject_id", ""),
        subject_jurisdiction=facts.get("subject_jurisdiction", ""),
        classification=Classification.PERSONAL if facts.get("subject_id") else Classification.UNSPECIFIED,
        checksum=sha256(value),
        origin_region="eu-west-1",
    )
    return Mutation(namespace, key, CausalContext.empty(), version, lsn=0, origin_node_id=origin)


async def plant(node: Node, mutations: list[Mutation]) -> None:
    """What a replica holds after its origin died before shipping to anyone else: applied
    through the node's writer, told to its digest trees the way the receiver tells them."""
    origin = mutations[0].origin_node_id
    await node.committer.run(lambda engine: engine.apply_remote(origin, mutations, 0))
    node.trees.mark([(m.namespace, m.key) for m in mutations])


def transfers(node: Node, action: str, decision: str) -> list[AuditEntry]:
    entries = (AuditEntry.decode(e.body) for e in node.audit.iter_all())
    return [e for e in entries if e.action == action and e.decision == decision and "antientropy" in e.detail]


def metric(of: Node, name: str, **labels: str) -> float:
    value = of.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_write_one_replica_holds_reaches_every_replica_in_scope_and_no_other(
    cluster: LocalCluster,
) -> None:
    west, central, us = (cluster.nodes[r] for r in REGIONS)
    eu = {"subject_id": "s-1", "subject_jurisdiction": "DE"}
    await plant(
        west, [ghost_write(west, "customers", f"c{i:02d}", b"eu profile %d" % i, **eu) for i in range(20)]
    )

    # The negative control: the check sees the divergence before anything repairs it.
    [before] = await central.entropy.check("eu-west-1", ["customers"], 100)
    assert before.divergent_total == 20
    assert before.divergent == [f"c{i:02d}" for i in range(20)]
    assert before.agreement < 1.0
    assert metric(central, "domicile_consistency_divergent_keys", node="eu-central-1", peer="eu-west-1",
                  namespace="customers") == 20  # fmt: skip
    # us-east-1 may not hold them: they are no divergence of that pair.
    [us_view] = await us.entropy.check("eu-west-1", ["customers"], 100)
    assert us_view.divergent_total == 0 and us_view.agreement == 1.0

    rounds = await central.entropy.round_with("eu-west-1")
    assert sum(c.repaired for c in rounds) == 20
    got = await cluster.get("eu-central-1", "customers", "c07")
    assert [v.value for v in got.versions] == [b"eu profile 7"]
    # Sealed under eu-central-1's own key for the subject, like a streamed copy.
    stored = central.engine.get("customers", "c07")
    assert stored is not None and stored.versions[0].value != b"eu profile 7"
    [after] = await central.entropy.check("eu-west-1", ["customers"], 100)
    assert after.divergent_total == 0 and after.agreement == 1.0 and after.keys >= 20
    assert metric(central, "domicile_antientropy_keys_repaired_total", node="eu-central-1", peer="eu-west-1",
                  namespace="customers") == 20  # fmt: skip
    assert metric(central, "domicile_antientropy_last_round_timestamp_seconds", node="eu-central-1",
                  peer="eu-west-1") > 0  # fmt: skip

    # The round from the US pulls nothing: the source withholds what the US may not hold.
    await us.entropy.round_with("eu-west-1")
    assert all(us.engine.get("customers", f"c{i:02d}") is None for i in range(20))

    # Both ends audited the transfer.
    await west.audit.flush()
    await central.audit.flush()
    sent = transfers(west, "replicate_send", "allow")
    received = transfers(central, "replicate_receive", "allow")
    assert {e.key for e in sent} >= {f"c{i:02d}" for i in range(20)}
    assert sorted(e.key for e in received) == [f"c{i:02d}" for i in range(20)]
    withheld = transfers(west, "replicate_send", "refuse")
    assert {e.key for e in withheld} >= {f"c{i:02d}" for i in range(20)} or not withheld


async def test_the_receiving_end_refuses_a_repair_its_region_may_not_hold(cluster: LocalCluster) -> None:
    # A peer that ignores the policy (or a stolen node key): the record itself is judged again.
    us = cluster.nodes["us-east-1"]
    m = ghost_write(us, "customers", "stolen", b"an EU customer", subject_id="s-2", subject_jurisdiction="DE")
    result = await us.receiver.apply_repair("eu-west-1", [mutation_to_pb(m)])
    assert result.refused == 1 and result.repaired == ()
    assert us.engine.get("customers", "stolen") is None
    assert metric(us, "domicile_replication_refused_total", source="eu-west-1", target="us-east-1") == 1


async def test_siblings_merge_as_in_streaming(cluster: LocalCluster) -> None:
    west, central = cluster.nodes["eu-west-1"], cluster.nodes["eu-central-1"]
    # Two concurrent writes of one key, each held by one replica only.
    eu = {"subject_id": "s-3", "subject_jurisdiction": "DE"}
    await plant(west, [ghost_write(west, "customers_eu", "k", b"one", origin="ghost-a", **eu)])
    await plant(central, [ghost_write(central, "customers_eu", "k", b"two", origin="ghost-b", **eu)])
    await central.entropy.round_with("eu-west-1")
    await west.entropy.round_with("eu-central-1")
    for region in ("eu-west-1", "eu-central-1"):
        assert await cluster.values(region, "customers_eu", "k") == {b"one", b"two"}
    [check] = await west.entropy.check("eu-central-1", ["customers_eu"], 10)
    assert check.divergent_total == 0


async def test_a_node_restored_from_an_old_copy_gets_its_later_writes_back_from_a_peer(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    eu = {"subject_id": "s-4", "subject_jurisdiction": "DE"}
    await cluster.put("eu-central-1", "customers_eu", "early", b"before the copy", **eu)

    async def shipped(key: str) -> bool:
        return bool(await cluster.values("eu-west-1", "customers_eu", key))

    await eventually(lambda: shipped("early"), 10, "early at eu-west-1")
    await cluster.stop_node("eu-central-1")
    copy = tmp_path / "old-copy"
    shutil.copytree(tmp_path / "eu-central-1", copy)
    await cluster.start_node("eu-central-1")
    await cluster.wait_linked()
    await cluster.put("eu-central-1", "customers_eu", "late", b"after the copy", **eu)
    await eventually(lambda: shipped("late"), 10, "late at eu-west-1")
    await cluster.stop_node("eu-central-1")
    shutil.rmtree(tmp_path / "eu-central-1")
    shutil.copytree(copy, tmp_path / "eu-central-1")
    restored = await cluster.start_node("eu-central-1")
    await cluster.wait_linked()
    assert restored.engine.get("customers_eu", "late") is None

    [check] = await restored.entropy.check("eu-west-1", ["customers_eu"], 10)
    assert check.divergent == ["late"]
    await restored.entropy.round_with("eu-west-1")
    assert await cluster.values("eu-central-1", "customers_eu", "late") == {b"after the copy"}


async def test_only_a_node_in_the_namespace_scope_may_call(cluster: LocalCluster) -> None:
    west = cluster.nodes["eu-west-1"]
    ask = rpb.EntropyDigestsRequest(namespace="customers_eu", caller_node_id="eu-central-1")
    # The tests' client holds every client role, not the node kind.
    stub = rpb_grpc.ReplicationServiceStub(cluster.channel(west.address))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.EntropyDigests(ask, timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A node of the cluster, but outside the namespace's scope.
    us_channel = cluster.channel_as_node("us-east-1", west.address)
    try:
        us_stub = rpb_grpc.ReplicationServiceStub(us_channel)
        for request in (
            rpb.EntropyDigestsRequest(namespace="customers_eu", caller_node_id="us-east-1"),
            # Naming another node does not help: the certificate names the caller.
            rpb.EntropyDigestsRequest(namespace="customers_eu", caller_node_id="eu-central-1"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await us_stub.EntropyDigests(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "namespace" in (info.value.details() or "") or "certificate" in (
                info.value.details() or ""
            )
    finally:
        await us_channel.close()
    # The node in scope is answered.
    central_channel = cluster.channel_as_node("eu-central-1", west.address)
    try:
        answer = await rpb_grpc.ReplicationServiceStub(central_channel).EntropyDigests(ask, timeout=5)
        assert len(answer.buckets) == 1024
    finally:
        await central_channel.close()


async def test_the_consistency_check_command_reports_divergence_per_pair_and_overall(
    cluster: LocalCluster,
) -> None:
    west, central = cluster.nodes["eu-west-1"], cluster.nodes["eu-central-1"]
    eu = {"subject_id": "s-5", "subject_jurisdiction": "DE"}
    await plant(west, [ghost_write(west, "customers", f"d{i}", b"v", **eu) for i in range(3)])
    argv = ["consistency", "check", "--coordinator", cluster.coordinator_address, *cluster.cli_args()]

    code, out = await cli([*argv, "--json", "--namespace", "customers"])
    assert code == 1, out
    report = json.loads(out)
    pairs = {(p["node_id"], p["peer_node_id"]): p for p in report["pairs"]}
    assert set(pairs) == {
        ("eu-central-1", "eu-west-1"),
        ("eu-central-1", "us-east-1"),
        ("eu-west-1", "us-east-1"),
    }
    [eu_pair] = pairs[("eu-central-1", "eu-west-1")]["namespaces"]
    assert (eu_pair["divergent"], eu_pair["divergent_keys"]) == (3, ["d0", "d1", "d2"])
    # The US may not hold them: not a divergence of the pairs with us-east-1.
    assert all(
        n["divergent"] == 0 for p in report["pairs"] if "us-east-1" in p.values() for n in p["namespaces"]
    )
    assert report["divergent"] == 3 and report["agreement"] < 1.0

    await central.entropy.round_with("eu-west-1")
    code, out = await cli(argv)
    assert code == 0, out
    assert out.splitlines()[-1].startswith("overall: 3 pairs checked, ")
    assert out.splitlines()[-1].endswith("0 divergent, agreement 100.0000%")


async def cli(argv: list[str]) -> tuple[int, str]:
    """Runs the `domicile` command in a thread (it runs an event loop of its own)."""
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return main(argv)

    code = await asyncio.to_thread(run)
    return code, out.getvalue()


async def test_states_too_large_for_one_answer_come_in_several(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A byte budget of about two values per answer: the round asks again for the rest.
    monkeypatch.setattr(entropy, "STATES_BYTES_MAX", 250)
    west, central = cluster.nodes["eu-west-1"], cluster.nodes["eu-central-1"]
    eu = {"subject_id": "s-6", "subject_jurisdiction": "DE"}
    await plant(west, [ghost_write(west, "customers", f"p{i:02d}", bytes(100), **eu) for i in range(15)])
    pages: list[int] = []
    apply_repair = central.receiver.apply_repair

    async def counted(peer: str, messages: Any) -> Any:
        pages.append(len(messages))
        return await apply_repair(peer, messages)

    monkeypatch.setattr(central.receiver, "apply_repair", counted)
    [result] = [c for c in await central.entropy.round_with("eu-west-1") if c.namespace == "customers"]
    assert result.repaired == 15
    assert len(pages) >= 5 and max(pages) <= 3, pages
    assert all(central.engine.get("customers", f"p{i:02d}") is not None for i in range(15))


async def test_a_write_whose_origin_died_after_reaching_one_replica_reaches_the_others(
    tmp_path: Path,
) -> None:
    c = LocalCluster(tmp_path, REGIONS, proxies=True)
    c.node_overrides["antientropy_interval_s"] = 0
    await c.start_linked()
    try:
        # Streams into eu-central-1 are cut; us-east-1's write reaches eu-west-1 only.
        c.proxies["eu-central-1"].partition()
        await c.put("us-east-1", "instruments", "XS0000000001", b"written just before the crash")

        async def at_west() -> bool:
            return bool(await c.values("eu-west-1", "instruments", "XS0000000001"))

        await eventually(at_west, 10, "the write at eu-west-1")
        await c.stop_node("us-east-1")  # the origin is gone for good
        c.proxies["eu-central-1"].heal()
        central = c.nodes["eu-central-1"]
        assert central.engine.get("instruments", "XS0000000001") is None
        # A peer out of reach is a comparison to retry, named as such, not a bug.
        c.proxies["eu-west-1"].partition()
        with pytest.raises(errors.Unavailable, match="peer eu-west-1"):
            await central.entropy.check("eu-west-1", ["instruments"], 10)
        c.proxies["eu-west-1"].heal()

        async def round_done() -> bool:
            # The channel reconnects with its own back-off after the partition.
            try:
                await central.entropy.round_with("eu-west-1")
            except errors.Unavailable:
                return False
            return True

        await eventually(round_done, 15, "a round with eu-west-1 once it is reachable")
        assert await c.values("eu-central-1", "instruments", "XS0000000001") == {
            b"written just before the crash"
        }
    finally:
        await c.stop()
