"""Idempotent writes: a Put or Delete retried with its request id after DEADLINE_EXCEEDED, when
the first attempt did commit, is written once, on the same node and on another node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile import errors
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.requests import delete_request, put_request
from node.daemon import Node
from node.engine.base import Committed, LocalWrite
from tests.support.cluster import LocalCluster, answer_late, eventually

EU = ["eu-west-1", "eu-central-1"]
NAMESPACES = [{"name": "notes_eu", "regions": EU}]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, EU, proxies=True, namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


def on_time(node: Node) -> None:
    node.committer.submit = type(node.committer).submit.__get__(node.committer)  # type: ignore[method-assign]


async def put_timing_out(cluster: LocalCluster, region: str, request: spb.PutRequest) -> None:
    node = cluster.nodes[region]
    answer_late(node, 1.0)
    with pytest.raises(grpc.aio.AioRpcError) as timed_out:
        await cluster.stub(region).Put(request, timeout=0.3)
    assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    on_time(node)
    await asyncio.sleep(1.0)  # the first attempt finishes in the node


def versions(node: Node, key: str) -> list[tuple[str, int, bytes]]:
    state = node.engine.get("notes_eu", key)
    return [] if state is None else [(v.dot.node_id, v.dot.counter, v.value) for v in state.versions]


async def test_a_retry_on_the_same_node_returns_the_original_version(pair: LocalCluster) -> None:
    request = spb.PutRequest(namespace="notes_eu", key="k", value=b"once", request_id="req-same-1")
    await put_timing_out(pair, "eu-west-1", request)
    node = pair.nodes["eu-west-1"]
    [(origin, counter, _)] = versions(node, "k")
    last_lsn = node.engine.last_lsn()
    retry = await pair.stub("eu-west-1").Put(request, timeout=5)
    assert (retry.version.dot.node_id, retry.version.dot.counter) == (origin, counter)
    assert retry.lsn == last_lsn
    assert versions(node, "k") == [(origin, counter, b"once")]
    assert node.engine.last_lsn() == last_lsn, "the retry wrote a change-log entry"


async def test_negative_control_a_retry_without_a_request_id_makes_a_second_sibling(
    pair: LocalCluster,
) -> None:
    request = spb.PutRequest(namespace="notes_eu", key="k", value=b"once")
    await put_timing_out(pair, "eu-west-1", request)
    await pair.stub("eu-west-1").Put(request, timeout=5)
    assert len(versions(pair.nodes["eu-west-1"], "k")) == 2


async def test_a_retry_on_another_node_that_has_the_write_returns_the_original_version(
    pair: LocalCluster,
) -> None:
    request = spb.PutRequest(namespace="notes_eu", key="k", value=b"once", request_id="req-other-1")
    await put_timing_out(pair, "eu-west-1", request)
    [(origin, counter, _)] = versions(pair.nodes["eu-west-1"], "k")

    async def replicated() -> bool:
        return len(versions(pair.nodes["eu-central-1"], "k")) == 1

    await eventually(replicated, 10.0, "the first attempt in eu-central-1")
    retry = await pair.stub("eu-central-1").Put(request, timeout=5)
    assert (retry.version.dot.node_id, retry.version.dot.counter) == (origin, counter)
    for region in EU:
        assert versions(pair.nodes[region], "k") == [(origin, counter, b"once")]


async def test_a_retry_on_another_node_that_lacks_the_write_converges_to_one_version(
    pair: LocalCluster,
) -> None:
    for proxy in pair.proxies.values():
        proxy.partition()
    request = spb.PutRequest(namespace="notes_eu", key="k", value=b"once", request_id="req-cut-1")
    await put_timing_out(pair, "eu-west-1", request)
    await pair.stub("eu-central-1").Put(request, timeout=5)
    assert len(versions(pair.nodes["eu-central-1"], "k")) == 1
    for proxy in pair.proxies.values():
        proxy.heal()

    async def converged() -> bool:
        west, central = (versions(pair.nodes[r], "k") for r in EU)
        return west == central and len(west) == 1

    await eventually(converged, 20.0, "one version of the retried write in both regions")
    # Both attempts' dots are known everywhere: a write with the context either node answered
    # with supersedes the one version kept.
    read = await pair.get("eu-central-1", "notes_eu", "k")
    assert len(read.versions) == 1


async def test_a_delete_retried_with_its_request_id_is_answered_with_the_first_tombstone(
    pair: LocalCluster,
) -> None:
    await pair.put("eu-west-1", "notes_eu", "k", b"v")
    request = spb.DeleteRequest(namespace="notes_eu", key="k", request_id="req-del-1")
    node = pair.nodes["eu-west-1"]
    answer_late(node, 1.0)
    with pytest.raises(grpc.aio.AioRpcError):
        await pair.stub("eu-west-1").Delete(request, timeout=0.3)
    on_time(node)
    await asyncio.sleep(1.0)
    [(origin, counter, _)] = versions(node, "k")
    retry = await pair.stub("eu-west-1").Delete(request, timeout=5)
    assert retry.existed
    assert (retry.version.dot.node_id, retry.version.dot.counter) == (origin, counter)
    assert versions(node, "k") == [(origin, counter, b"")]


async def test_a_node_remembers_request_ids_across_a_restart(pair: LocalCluster) -> None:
    request = spb.PutRequest(namespace="notes_eu", key="k", value=b"once", request_id="req-restart-1")
    first = await pair.stub("eu-west-1").Put(request, timeout=5)
    await pair.stop_node("eu-west-1")
    await pair.start_node("eu-west-1")
    retry = await pair.stub("eu-west-1").Put(request, timeout=5)
    assert (retry.version.dot, retry.version.hlc, retry.lsn) == (
        first.version.dot,
        first.version.hlc,
        first.lsn,
    )
    assert len(versions(pair.nodes["eu-west-1"], "k")) == 1


async def test_the_sdk_retries_a_write_with_its_request_id_and_it_is_written_once(pair: LocalCluster) -> None:
    """The first attempt commits, then its node answers UNAVAILABLE; the SDK retries (on
    whichever node it routes to) with the same request id."""
    for node in pair.nodes.values():
        submit = node.committer.submit
        failed: list[LocalWrite] = []

        async def commit_then_fail(write: LocalWrite, submit=submit, failed=failed) -> Committed:  # type: ignore[no-untyped-def]
            committed = await submit(write)
            if not failed:
                failed.append(write)
                raise errors.Unavailable("the answer was lost after the commit")
            return committed

        node.committer.submit = commit_then_fail  # type: ignore[method-assign]
    async with pair.async_client() as client:
        result = await client.put("notes_eu", "sdk", b"once")

    async def once_everywhere() -> bool:
        west, central = (versions(pair.nodes[r], "sdk") for r in EU)
        return west == central and len(west) == 1

    await eventually(once_everywhere, 20.0, "one version of the write, the same in both regions")
    # Attempts that reached different nodes made twins; every node keeps the same one, and the
    # version the SDK was answered with is it or one of its twins (a context naming it
    # supersedes the kept one).
    state = pair.nodes["eu-west-1"].engine.get("notes_eu", "sdk")
    assert state is not None
    mark = state.request(result.version.request_id)
    assert mark is not None and result.version.dot in mark.dots
    assert [v.value for v in state.versions] == [b"once"]


def test_the_sdk_gives_each_logical_write_its_own_request_id() -> None:
    first = put_request("notes_eu", "k", b"v", None, "", "", None, "")
    second = put_request("notes_eu", "k", b"v", None, "", "", None, "")
    assert first.request_id and second.request_id and first.request_id != second.request_id
    assert delete_request("notes_eu", "k", None).request_id
    assert (
        put_request("notes_eu", "k", b"v", None, "", "", None, "", request_id="mine-1").request_id == "mine-1"
    )
    with pytest.raises(errors.InvalidArgument, match="request id"):
        put_request("notes_eu", "k", b"v", None, "", "", None, "", request_id="not allowed!")
