"""ReplicationService servicer: the target end of a replication stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from domicile import errors
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from node.api.errors import abort_with
from node.replication.inbound import Receiver

log = logging.getLogger("domicile.replication.inbound")


class ReplicationServicer(rpb_grpc.ReplicationServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def Replicate(
        self, request_iterator: AsyncIterator[rpb.ReplicateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.ReplicateResponse]:
        source = ""
        try:
            first = await anext(request_iterator, None)
            if first is None or first.WhichOneof("kind") != "hello":
                raise errors.InvalidArgument("a replication stream must start with a hello")
            hello = first.hello
            if hello.target_node_id != self.receiver.node_id:
                raise errors.FailedPrecondition(
                    f"this is node {self.receiver.node_id}, not {hello.target_node_id!r}; "
                    "refresh the topology"
                )
            source = hello.source_node_id
            position = await self.receiver.open(source)
            log.info("replication stream from %s opened at position %d", source, position)
            yield rpb.ReplicateResponse(
                ready=rpb.ReplicationReady(resume_after_lsn=position, target_node_id=self.receiver.node_id)
            )
            async for request in request_iterator:
                if request.WhichOneof("kind") != "batch":
                    raise errors.InvalidArgument("after the hello, a replication stream carries only batches")
                batch = request.batch
                # Decoded and checked one by one by the receiver: a bad mutation is refused alone.
                result = await self.receiver.apply_batch(source, batch.mutations, batch.through_lsn)
                yield rpb.ReplicateResponse(
                    ack=rpb.ReplicationAck(
                        applied_through_lsn=result.through_lsn,
                        refused_count=result.refused,
                        duplicate_count=result.duplicates,
                    )
                )
        except errors.DomicileError as exc:
            log.warning("replication stream from %s failed: %s", source or "?", exc.message)
            await abort_with(context, exc)
        finally:
            if source:
                self.receiver.close(source)
