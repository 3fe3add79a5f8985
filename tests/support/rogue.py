"""A replication source that says whatever a test wants: batches with forged positions, dots,
clocks and sizes, sent on a raw stream to a node's ReplicationService."""

from __future__ import annotations

import json
from typing import Any

import grpc

from domicile.causality import sha256
from domicile.hlc import pack, wall_ms
from domicile.v1 import record_pb2 as pb
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from node.daemon import Node


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
    """One replication stream to `target`, claiming to come from `source`."""

    def __init__(self, target: Node, source: str) -> None:
        self.target = target
        self.source = source
        self.channel = grpc.aio.insecure_channel(target.address)
        self.call: Any = None
        self.position = 0

    async def __aenter__(self) -> RogueStream:
        self.call = rpb_grpc.ReplicationServiceStub(self.channel).Replicate(timeout=30)
        await self.call.write(
            rpb.ReplicateRequest(
                hello=rpb.ReplicationHello(
                    source_node_id=self.source,
                    source_region="eu-west-1",
                    target_node_id=self.target.config.node_id,
                )
            )
        )
        ready = await self.call.read()
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


def audit_entries(node: Node, after_seq: int = 0) -> list[dict[str, Any]]:
    """The node's audit entries after `after_seq`, decoded."""
    return [json.loads(e.body) for e in node.audit.read(after_seq, 10_000)]


def rejected(node: Node, source: str, reason: str) -> float:
    value = node.metrics.registry.get_sample_value(
        "domicile_replication_rejected_total",
        {"source": source, "target": node.config.node_id, "reason": reason},
    )
    return value or 0.0
