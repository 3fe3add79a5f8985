"""The sibling cap over gRPC: a client write past it is refused with FAILED_PRECONDITION and the
key stays readable and resolvable; replicated writes past it are kept and counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster, eventually

EU = ["eu-west-1", "eu-central-1"]
NAMESPACES = [{"name": "notes_eu", "regions": EU, "siblings_max": 2}]


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, EU, proxies=True, namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_a_put_past_the_cap_fails_and_the_context_resolves_the_key(capped: LocalCluster) -> None:
    for value in (b"a", b"b"):
        await capped.put("eu-west-1", "notes_eu", "k", value)
    before = await capped.get("eu-west-1", "notes_eu", "k")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await capped.put("eu-west-1", "notes_eu", "k", b"c")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds 2 versions" in (refused.value.details() or "")
    assert "siblings_max of 2" in (refused.value.details() or "")
    read = await capped.get("eu-west-1", "notes_eu", "k")
    assert read == before
    resolved = await capped.stub("eu-west-1").Put(
        spb.PutRequest(namespace="notes_eu", key="k", value=b"merged", context_token=read.context_token),
        timeout=5,
    )
    assert resolved.version.value == b"merged"
    assert await capped.values("eu-west-1", "notes_eu", "k") == {b"merged"}


async def test_replicated_siblings_past_the_cap_are_kept_and_counted(capped: LocalCluster) -> None:
    for proxy in capped.proxies.values():
        proxy.partition()
    await capped.put("eu-west-1", "notes_eu", "k", b"west-1")
    await capped.put("eu-west-1", "notes_eu", "k", b"west-2")
    await capped.put("eu-central-1", "notes_eu", "k", b"central-1")
    await capped.put("eu-central-1", "notes_eu", "k", b"central-2")
    for proxy in capped.proxies.values():
        proxy.heal()
    every = {b"west-1", b"west-2", b"central-1", b"central-2"}

    async def merged() -> bool:
        return all([await capped.values(r, "notes_eu", "k") == every for r in EU])

    await eventually(merged, 20.0, "both regions holding all four siblings")
    for region in EU:
        counter = capped.nodes[region].metrics.siblings_over_cap.labels("notes_eu")
        assert counter._value.get() >= 1
    read = await capped.get("eu-central-1", "notes_eu", "k")
    await capped.stub("eu-central-1").Put(
        spb.PutRequest(namespace="notes_eu", key="k", value=b"one", context_token=read.context_token),
        timeout=5,
    )

    async def resolved() -> bool:
        return all([await capped.values(r, "notes_eu", "k") == {b"one"} for r in EU])

    await eventually(resolved, 20.0, "the resolving write in both regions")
