"""Replication between in-process nodes on real sockets: scope, siblings, lww, restarts and a
coordinator outage."""

from __future__ import annotations

import grpc
import pytest

from domicile.audit import AuditEntry
from domicile.wire.records import context_from_pb
from node.daemon import Node
from node.replication import send_audit
from tests.support.cluster import LocalCluster, eventually


async def barrier(cluster: LocalCluster, origin: str, key: str) -> None:
    """Writes a global record at `origin` and waits until every node has it: everything `origin`
    committed before it has then been offered to every node (links are ordered)."""
    await cluster.put(origin, "instruments", key, b"barrier")
    for region in cluster.nodes:

        async def arrived(region: str = region) -> bool:
            return await cluster.values(region, "instruments", key) == {b"barrier"}

        await eventually(arrived, 10, f"barrier {key} at {region}")


async def test_global_record_reaches_every_region(four: LocalCluster) -> None:
    await four.put("us-east-1", "instruments", "AAPL", b"apple")
    for region in four.regions:

        async def arrived(region: str = region) -> bool:
            return await four.values(region, "instruments", "AAPL") == {b"apple"}

        await eventually(arrived, 10, f"AAPL at {region}")


async def test_scoped_record_stays_in_scope(four: LocalCluster) -> None:
    await four.put("eu-west-1", "customers_eu", "c1", b"ada")

    async def in_frankfurt() -> bool:
        return await four.values("eu-central-1", "customers_eu", "c1") == {b"ada"}

    await eventually(in_frankfurt, 10, "c1 at eu-central-1")
    await barrier(four, "eu-west-1", "after-c1")
    for region in ("us-east-1", "ap-northeast-1"):
        node = four.nodes[region]
        assert node.engine.get("customers_eu", "c1") is None, f"customers_eu leaked to {region}"
        assert node.engine.scan("customers_eu", "", "", 10) == []


async def test_write_outside_scope_is_refused_with_allowed_regions(four: LocalCluster) -> None:
    node = four.nodes["us-east-1"]
    before = node.engine.last_lsn()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await four.put("us-east-1", "customers_eu", "c2", b"x")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "eu-west-1" in (info.value.details() or "")
    trailers = dict(info.value.trailing_metadata() or ())
    assert trailers["domicile-allowed-regions"] == "eu-west-1,eu-central-1"
    assert node.engine.last_lsn() == before
    assert node.engine.get("customers_eu", "c2") is None


async def test_concurrent_writes_become_siblings_and_a_context_supersedes_them(eu_pair: LocalCluster) -> None:
    c = eu_pair
    await c.put("eu-west-1", "customers_eu", "k", b"one")

    async def replicated() -> bool:
        return await c.values("eu-central-1", "customers_eu", "k") == {b"one"}

    await eventually(replicated, 10, "first write replicated")
    # A write without context supersedes nothing: it is concurrent with "one".
    await c.put("eu-central-1", "customers_eu", "k", b"two")
    for region in ("eu-west-1", "eu-central-1"):

        async def both(region: str = region) -> bool:
            return await c.values(region, "customers_eu", "k") == {b"one", b"two"}

        await eventually(both, 10, f"siblings at {region}")
    got = await c.get("eu-west-1", "customers_eu", "k")
    assert len(got.versions) == 2
    resolved = await c.put("eu-west-1", "customers_eu", "k", b"merged", context_from_pb(got.context))
    assert resolved.version.dot.node_id == "eu-west-1"
    for region in ("eu-west-1", "eu-central-1"):

        async def merged(region: str = region) -> bool:
            return await c.values(region, "customers_eu", "k") == {b"merged"}

        await eventually(merged, 10, f"merged value at {region}")


async def test_lww_resolves_a_partitioned_conflict_and_counts_it(eu_pair: LocalCluster) -> None:
    c = eu_pair
    for proxy in c.proxies.values():
        proxy.partition()
    first = await c.put("eu-west-1", "prefs_eu", "theme", b"dark")
    second = await c.put("eu-central-1", "prefs_eu", "theme", b"light")
    winner = max(
        (first.version.hlc, first.version.dot.node_id, b"dark"),
        (second.version.hlc, second.version.dot.node_id, b"light"),
    )[2]
    for proxy in c.proxies.values():
        proxy.heal()
    for region in ("eu-west-1", "eu-central-1"):

        async def converged(region: str = region) -> bool:
            return await c.values(region, "prefs_eu", "theme") == {winner}

        await eventually(converged, 15, f"lww winner at {region}")

    def conflicts(region: str) -> float:
        value = c.nodes[region].metrics.registry.get_sample_value(
            "domicile_conflicts_total", {"namespace": "*", "mode": "replicated"}
        )
        return value or 0.0

    await eventually(
        lambda: _true(conflicts("eu-west-1") >= 1 and conflicts("eu-central-1") >= 1), 10, "conflicts counted"
    )


async def _true(value: bool) -> bool:
    return value


async def test_target_restart_resumes_without_loss(eu_pair: LocalCluster) -> None:
    c = eu_pair
    await c.stop_node("eu-central-1")
    for i in range(50):
        await c.put("eu-west-1", "customers_eu", f"k{i:03}", f"v{i}".encode())
    await c.start_node("eu-central-1")

    async def all_arrived() -> bool:
        return len(c.nodes["eu-central-1"].engine.scan("customers_eu", "k", "", 100)) == 50

    await eventually(all_arrived, 15, "50 records at the restarted target")
    for i in range(50):
        state = c.nodes["eu-central-1"].engine.get("customers_eu", f"k{i:03}")
        assert state is not None and [v.value for v in state.versions] == [f"v{i}".encode()]
    position = c.nodes["eu-central-1"].engine.inbound_position("eu-west-1")
    assert position == c.nodes["eu-west-1"].engine.last_lsn()


async def test_source_restart_resumes_from_the_target_position(eu_pair: LocalCluster) -> None:
    c = eu_pair
    await c.stop_node("eu-central-1")
    for i in range(20):
        await c.put("eu-west-1", "customers_eu", f"s{i:02}", b"v")
    await c.stop_node("eu-west-1")
    await c.start_node("eu-central-1")
    await c.start_node("eu-west-1")
    await c.put("eu-west-1", "customers_eu", "s99", b"after-restart")

    target = c.nodes["eu-central-1"]

    async def all_arrived() -> bool:
        # The counter moves once the batch's audit entries are durable too, a moment after the
        # records are readable: wait for both.
        stats = target.receiver.stats.get("eu-west-1")
        stored = len(target.engine.scan("customers_eu", "s", "", 100))
        return stored == 21 and stats is not None and stats.applied_total >= 21

    await eventually(all_arrived, 15, "21 records after both restarts")
    applied = target.receiver.stats["eu-west-1"].applied_total
    assert applied == 21, f"applied {applied} mutations for 21 writes: something was applied twice or lost"


async def test_nodes_keep_replicating_while_the_coordinator_is_down(four: LocalCluster) -> None:
    c = four
    revision_before = c.nodes["eu-west-1"].view.revision
    await c.stop_coordinator()
    await c.put("us-east-1", "instruments", "MSFT", b"microsoft")
    for region in c.regions:

        async def arrived(region: str = region) -> bool:
            return await c.values(region, "instruments", "MSFT") == {b"microsoft"}

        await eventually(arrived, 10, f"MSFT at {region} with the coordinator down")
    await c.start_coordinator()

    async def resynced() -> bool:
        return all(n.link.connected for n in c.nodes.values())

    await eventually(resynced, 15, "every node reconnected to the coordinator")
    assert c.nodes["eu-west-1"].view.revision >= revision_before


async def test_a_batch_send_entry_covers_its_records_and_matches_both_ends(eu_pair: LocalCluster) -> None:
    # Public records need no replicate_send entry each: one per batch names their positions and
    # digest. Derived from the source's change log, and from the target's receive entries, they
    # match it; a personal record keeps its own entry.
    source, central = eu_pair.nodes["eu-west-1"], eu_pair.nodes["eu-central-1"]
    keys = [f"bond-{i}" for i in range(20)]
    for key in keys:
        await eu_pair.put("eu-west-1", "instruments", key, b"coupon")
    await eu_pair.put("eu-west-1", "customers_eu", "ada", b"lovelace")
    await barrier(eu_pair, "eu-west-1", "after-bonds")
    await source.audit.flush()
    await central.audit.flush()
    sent = [AuditEntry.decode(e.body) for e in source.audit.iter_all()]
    sent = [e for e in sent if e.action == "replicate_send" and e.decision == "allow"]
    log = {m.lsn: m for m in source.engine.read_log(0, 10_000)}
    written = {m.lsn for m in log.values() if m.namespace == "instruments" and m.key in keys}
    received = {
        int(e.detail.split("lsn=")[1].split()[0]): e.key
        for e in (AuditEntry.decode(s.body) for s in central.audit.iter_all())
        if e.action == "replicate_receive" and e.principal == "node:eu-west-1" and "lsn=" in e.detail
    }
    for target in ("eu-central-1", "us-east-1"):
        covered: list[int] = []
        for entry in sent:
            batch = send_audit.parse(entry.detail)
            if batch is None or batch.target != target:
                continue
            assert entry.key == "" and entry.namespace == "instruments" and entry.rule
            assert send_audit.verify(batch, [(lsn, log[lsn].key) for lsn in batch.lsns()]) == ""
            if target == "eu-central-1":
                assert send_audit.verify(batch, [(lsn, received[lsn]) for lsn in batch.lsns()]) == ""
            covered.extend(batch.lsns())
        assert sorted(covered) == sorted(set(covered)), "a record covered twice"
        assert written <= set(covered), f"records sent to {target} without a batch entry"
    assert not [e for e in sent if e.key in keys], "a public record got an entry of its own"
    (personal,) = [e for e in sent if e.key == "ada"]
    assert personal.detail.startswith("to=eu-central-1 lsn=")


def _applies(node: Node, source: str) -> float:
    """How many applies the node ran for streams from `source` (the count of its check stage)."""
    total = 0.0
    for family in node.metrics.registry.collect():
        for sample in family.samples:
            if (
                sample.name == "domicile_replication_stage_seconds_count"
                and sample.labels["stage"] == "check"
                and sample.labels["link"].startswith(f"{source}->")
            ):
                total += sample.value
    return total


async def test_a_link_without_records_to_carry_holds_its_position_instead_of_a_message_per_write(
    four: LocalCluster,
) -> None:
    # customers_eu is held in eu-west-1 and eu-central-1 only: its writes carry records to
    # eu-central-1, and only positions to us-east-1 (which shares the global namespaces).
    source = four.nodes["eu-west-1"]
    source_id = source.config.node_id
    near, far = four.nodes["eu-central-1"], four.nodes["us-east-1"]
    await barrier(four, "eu-west-1", "before")
    near_before, far_before = _applies(near, source_id), _applies(far, source_id)
    writes = 30
    for i in range(writes):
        await four.put("eu-west-1", "customers_eu", f"held-{i}", b"x")
    last = source.engine.last_lsn()

    async def told() -> bool:
        return far.receiver.stats_for(source_id).position >= last

    # The position still arrives (within the hold), with no record.
    await eventually(told, 10, "us-east-1 told the source's position")
    assert far.engine.get("customers_eu", "held-0") is None
    far_applies = _applies(far, source_id) - far_before
    assert 1 <= far_applies <= writes / 3, far_applies

    async def near_has_all() -> bool:
        return near.receiver.stats_for(source_id).position >= last

    await eventually(near_has_all, 10, "eu-central-1 has every record")
    # The control: the link with records ships each sequential write as it commits.
    assert _applies(near, source_id) - near_before >= writes / 2
