"""A replication stream opened with a node's own certificate, to send a target exactly the
mutations a test builds: what a misconfigured or rogue node, or one of an older version, could
send. The target judges them as it judges any source's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from domicile.causality import sha256
from domicile.hlc import pack as hlc_pack
from domicile.hlc import wall_ms
from domicile.v1 import record_pb2 as pb
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from tests.support.cluster import LocalCluster


class NodeStream:
    """The open stream; `start` is the position the target resumes after."""

    def __init__(self, call: grpc.aio.StreamStreamCall, source: str, start: int) -> None:
        self.call = call
        self.source = source
        self.start = start
        self.lsn = start
        self._now = wall_ms()

    def mutation(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        classification: int = pb.CLASSIFICATION_PUBLIC,
        subject_id: str = "",
        subject_jurisdiction: str = "",
    ) -> pb.Mutation:
        """The source's next mutation: the next position, a dot counter equal to it, no context
        (concurrent with whatever the target holds of the key)."""
        self.lsn += 1
        m = pb.Mutation(namespace=namespace, key=key, lsn=self.lsn, origin_node_id=self.source)
        m.version.dot.node_id = self.source
        m.version.dot.counter = self.lsn
        m.version.value = value
        m.version.checksum_sha256 = sha256(value)
        m.version.hlc = hlc_pack(self._now, self.lsn)
        m.version.classification = classification  # type: ignore[assignment]
        m.version.subject_id = subject_id
        m.version.subject_jurisdiction = subject_jurisdiction
        m.version.origin_region = self.source
        return m

    async def send(self, mutations: list[pb.Mutation]) -> int:
        """Sends one batch through the last mutation built; the position the target acknowledged."""
        batch = rpb.ReplicationBatch(mutations=mutations, through_lsn=self.lsn)
        await self.call.write(rpb.ReplicateRequest(batch=batch))
        return int((await self.call.read()).ack.applied_through_lsn)


@asynccontextmanager
async def node_stream(
    cluster: LocalCluster, source: str, target: str, timeout_s: float = 30.0
) -> AsyncIterator[NodeStream]:
    """A stream to node `target` as node `source` (a region of the cluster, its node id)."""
    channel = cluster.channel_as_node(source, cluster.nodes[target].address)
    try:
        call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=timeout_s)
        hello = rpb.ReplicationHello(source_node_id=source, source_region=source, target_node_id=target)
        await call.write(rpb.ReplicateRequest(hello=hello))
        stream = NodeStream(call, source, (await call.read()).ready.resume_after_lsn)
        yield stream
        await call.done_writing()
    finally:
        await channel.close()
