"""A replication batch's request, built as bytes from mutations serialized once.

A record of a namespace held in six regions goes out on five links, and each link used to copy
the record's message into a request of its own and have gRPC serialize that request again: the
same bytes, built five times. Protobuf's wire format makes a repeated message field the
concatenation of its elements, each as (tag, length, bytes), and an embedded message its
(tag, length, bytes) too. So a record is serialized and framed as an element of
ReplicationBatch.mutations once (node.replication.encoded keeps it for every link), and a
link's request is the join of its records' framed bytes, the batch's through_lsn and the
ReplicateRequest frame around them: what parsing the request gives is exactly the message the
link used to build (tests/unit/test_replication_batch_wire.py).

The stream's request serializer passes such bytes through and serializes a message (the hello,
a bootstrap's parts) as gRPC's generated stub would.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message

from domicile.v1 import record_pb2 as pb
from domicile.v1 import replication_pb2 as rpb
from domicile.wire.framing import frame, message_field_tag

# Taken from the descriptors, so that the framing follows the protos.
_MUTATION_TAG = message_field_tag(rpb.ReplicationBatch.DESCRIPTOR, "mutations")
_BATCH_TAG = message_field_tag(rpb.ReplicateRequest.DESCRIPTOR, "batch")


def framed_mutation(message: pb.Mutation) -> bytes:
    """A mutation as one element of ReplicationBatch.mutations: its tag, length and bytes."""
    body = message.SerializeToString()
    return frame(_MUTATION_TAG, body)


def batch_request(framed: Iterable[bytes], through_lsn: int) -> bytes:
    """The serialized ReplicateRequest of a batch of framed mutations (framed_mutation), in
    order, through `through_lsn`."""
    body = b"".join(framed) + rpb.ReplicationBatch(through_lsn=through_lsn).SerializeToString()
    return frame(_BATCH_TAG, body)


def serialize_request(request: bytes | Message) -> bytes:
    """The replication stream's request serializer: a batch built by batch_request as it is,
    any other request message serialized."""
    if isinstance(request, bytes):
        return request
    return request.SerializeToString()
