"""A replication source that says whatever a test wants: batches with forged positions, dots,
clocks and sizes, sent on a raw stream to a node's ReplicationService.

It dials over mutual TLS with the certificate of a node of the cluster that holds a link to the
target (a stolen key, or a node that no longer follows the protocol): it passes authentication
and the receiver's source check, so what it sends reaches every check the receiver makes of the
stream's contents."""

from __future__ import annotations

import json
from typing import Any

from domicile.causality import sha256
from domicile.hlc import pack, wall_ms
from domicile.v1 import record_pb2 as pb
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from node.daemon import Node
from tests.support.cluster import LocalCluster

# A node of the cluster whose key a rogue holds: it holds a link to both EU nodes (through the
# global namespace) and writes nothing itself, so the positions of its streams at a target are
# the test's alone.
ROGUE = "rogue-1"
ROGUE_REGION = "ap-northeast-1"


def mutation(
    source: str,
    lsn: int,
    key: str,
    value: bytes = b"v",
    *,
    namespace: str = "instruments",
    counter: int | None = None,
    hlc: int | None = None,
    **version: Any,
) -> pb.Mutation:
    """A well-formed mutation written at `source` (public, global namespace) unless told otherwise."""
    msg = pb.Mutation(namespace=namespace, key=key, lsn=lsn, origin_node_id=source)
    msg.version.dot.node_id = source
    msg.version.dot.counter = lsn if counter is None else counter
    msg.version.value = value
    msg.version.checksum_sha256 = sha256(value)
    msg.version.hlc = pack(wall_ms(), 0) if hlc is None else hlc
    msg.version.classification = pb.CLASSIFICATION_PUBLIC
    for name, field_value in version.items():
        setattr(msg.version, name, field_value)
    return msg


class RogueStream:
    """One replication stream to `target`, claiming to come from `source`, with the certificate
    of `sender` (a running node of `cluster`; by default `source` itself)."""

    def __init__(self, cluster: LocalCluster, target: Node, source: str, *, sender: str = "") -> None:
        self.target = target
        self.source = source
        node = node_named(cluster, sender or source)
        self.region = node.config.region
        self.channel = cluster.channel_as_node(self.region, target.address, node.config.node_id)
        self.call: Any = None
        self.position = 0

    async def __aenter__(self) -> RogueStream:
        try:
            self.call = rpb_grpc.ReplicationServiceStub(self.channel).Replicate(timeout=30)
            await self.call.write(
                rpb.ReplicateRequest(
                    hello=rpb.ReplicationHello(
                        source_node_id=self.source,
                        source_region=self.region,
                        target_node_id=self.target.config.node_id,
                    )
                )
            )
            ready = await self.call.read()
        except BaseException:
            await self.channel.close()
            raise
        self.position = ready.ready.resume_after_lsn
        return self

    async def send(self, mutations: list[pb.Mutation], through_lsn: int) -> rpb.ReplicationAck:
        await self.call.write(
            rpb.ReplicateRequest(batch=rpb.ReplicationBatch(mutations=mutations, through_lsn=through_lsn))
        )
        response = await self.call.read()
        assert response.WhichOneof("kind") == "ack", response
        ack: rpb.ReplicationAck = response.ack
        return ack

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.call is not None:
                await self.call.done_writing()
        finally:
            await self.channel.close()


def node_named(cluster: LocalCluster, node_id: str) -> Node:
    """The running node of `cluster` with this id."""
    for node in cluster.nodes.values():
        if node.config.node_id == node_id:
            return node
    raise AssertionError(f"no running node {node_id!r} in the cluster")


def audit_entries(node: Node, after_seq: int = 0) -> list[dict[str, Any]]:
    """The node's audit entries after `after_seq`, decoded."""
    return [json.loads(e.body) for e in node.audit.read(after_seq, 10_000)]


def rejected(node: Node, source: str, reason: str) -> float:
    value = node.metrics.registry.get_sample_value(
        "domicile_replication_rejected_total",
        {"source": source, "target": node.config.node_id, "reason": reason},
    )
    return value or 0.0
