"""The deadline of a storage call: gRPC keeps a deadline the caller set (the node sets no timer
of its own for it) and the node counts a call cancelled by it as DEADLINE_EXCEEDED; a call
without one is bounded by the node's default deadline, which answers DEADLINE_EXCEEDED."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from domicile.model import Limits
from domicile.v1 import storage_node_pb2 as spb
from node.daemon import Node
from tests.support.cluster import LocalCluster, answer_late, eventually

REGION = "eu-west-1"
NAMESPACES = [{"name": "notes_eu", "regions": [REGION]}]
DEFAULT_DEADLINE_S = 1.0
LATE_S = 3.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    it = LocalCluster(tmp_path, [REGION], namespaces=NAMESPACES)
    it.node_overrides["limits"] = Limits(request_deadline_default_s=DEFAULT_DEADLINE_S)
    await it.start()
    try:
        yield it
    finally:
        await it.stop()


def put_errors(node: Node, code: str) -> float:
    value: float = node.metrics.rpc_errors.labels("Put", code)._value.get()
    return value


async def until(condition: Callable[[], bool], what: str) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, what=what)


def put(key: str) -> spb.PutRequest:
    return spb.PutRequest(namespace="notes_eu", key=key, value=b"v")


async def test_a_call_past_the_callers_deadline_is_counted_as_deadline_exceeded(
    cluster: LocalCluster,
) -> None:
    node = cluster.nodes[REGION]
    answer_late(node, LATE_S)
    before = put_errors(node, "DEADLINE_EXCEEDED"), put_errors(node, "CANCELLED")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await cluster.stub(REGION).Put(put("late"), timeout=0.3)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await until(lambda: put_errors(node, "DEADLINE_EXCEEDED") == before[0] + 1, "counted")
    assert put_errors(node, "CANCELLED") == before[1]


async def test_negative_control_a_caller_that_goes_away_is_counted_as_cancelled(
    cluster: LocalCluster,
) -> None:
    node = cluster.nodes[REGION]
    answer_late(node, LATE_S)
    before = put_errors(node, "DEADLINE_EXCEEDED"), put_errors(node, "CANCELLED")
    call = cluster.stub(REGION).Put(put("gone"), timeout=30)
    await until(lambda: node.engine.get("notes_eu", "gone") is not None, "the write committed")
    call.cancel()
    await until(lambda: put_errors(node, "CANCELLED") == before[1] + 1, "counted")
    assert put_errors(node, "DEADLINE_EXCEEDED") == before[0]


async def test_a_call_without_a_deadline_is_bounded_by_the_default_one(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    answer_late(node, LATE_S)
    before = put_errors(node, "DEADLINE_EXCEEDED")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await cluster.stub(REGION).Put(put("unbounded"))
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert f"did not complete within {DEFAULT_DEADLINE_S:.3f} s" in (failed.value.details() or "")
    assert put_errors(node, "DEADLINE_EXCEEDED") == before + 1
