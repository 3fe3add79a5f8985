"""kill -9 of a node on the MongoDB engine while writes are in flight loses no write it
acknowledged: a write is acknowledged only after its transaction committed with write concern
majority and journaling, so the restarted node serves every one of them."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest

from bench.cluster import SOLO_NAMESPACE, SOLO_REGION, BenchCluster
from bench.procs import Children
from domicile.v1 import storage_node_pb2 as spb
from tests.support.mongo import MongoServer

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITERS = 8
ACKED_BEFORE_KILL = 300


async def test_kill_9_of_a_mongodb_node_during_writes_loses_no_acknowledged_write(
    tmp_path: Path, mongo_server: MongoServer
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    children = Children(logs, REPO_ROOT)
    cluster = BenchCluster(tmp_path, children)
    database = (mongo_server.uri, mongo_server.database_name("crash"))
    try:
        await cluster.start_coordinator()
        node = await cluster.start_node(SOLO_REGION, mongodb=database)
        acked: list[str] = []
        refused: list[grpc.StatusCode] = []

        async def writer(w: int) -> None:
            for i in range(1_000_000):
                key = f"w{w}-{i}"
                try:
                    await node.stub.Put(
                        spb.PutRequest(namespace=SOLO_NAMESPACE, key=key, value=key.encode()), timeout=10
                    )
                except grpc.aio.AioRpcError as error:
                    refused.append(error.code())
                    return
                acked.append(key)

        writers = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
        while len(acked) < ACKED_BEFORE_KILL:
            if all(t.done() for t in writers):
                raise AssertionError(f"writers stopped before the kill: {refused}")
            await asyncio.sleep(0.01)
        os.kill(children.children[f"node-{node.node_id}"].process.pid, signal.SIGKILL)
        await asyncio.gather(*writers)
        assert len(refused) == WRITERS  # every writer saw the node go
        await cluster.stop_node(node.node_id)

        again = await cluster.start_node(SOLO_REGION, mongodb=database)
        lost = []
        for key in acked:
            got = await again.stub.Get(spb.GetRequest(namespace=SOLO_NAMESPACE, key=key), timeout=10)
            if [v.value for v in got.versions] != [key.encode()]:
                lost.append(key)
        assert lost == [], f"{len(lost)} of {len(acked)} acknowledged writes lost: {lost[:10]}"
    finally:
        await cluster.close()
        await children.stop_all()
