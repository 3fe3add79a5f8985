"""A batch request built from records serialized once (node/replication/batch_wire.py) is the
request a link used to build message by message: the target parses the same message."""

from __future__ import annotations

import os
import random

from domicile.causality import CausalContext, Dot, Mutation, Version
from domicile.v1 import replication_pb2 as rpb
from domicile.wire.records import mutation_to_pb
from node.replication.batch_wire import batch_request, framed_mutation, serialize_request


def record(rng: random.Random, lsn: int) -> Mutation:
    # Values and keys of every length class: a length's varint takes one, two or three bytes.
    value = rng.randbytes(rng.choice((0, 1, 100, 127, 128, 300, 20_000)))
    key = "k" * rng.choice((1, 5, 200))
    version = Version(
        dot=Dot("n1", lsn), value=value, hlc=rng.randrange(1, 1 << 60), origin_region="eu-west-1"
    )
    return Mutation("orders", key, CausalContext.empty(), version, lsn=lsn, origin_node_id="n1")


def message_built(mutations: list[Mutation], through: int) -> rpb.ReplicateRequest:
    """The request as a link used to build it."""
    request = rpb.ReplicateRequest(batch=rpb.ReplicationBatch(through_lsn=through))
    request.batch.mutations.extend(mutation_to_pb(m) for m in mutations)
    return request


def test_a_request_from_framed_records_parses_as_the_message_built_field_by_field() -> None:
    seed = int(os.environ.get("BATCH_WIRE_SEED", random.randrange(1 << 32)))
    print(f"seed {seed} (replay: BATCH_WIRE_SEED={seed})")
    rng = random.Random(seed)
    for _ in range(200):
        start = rng.randrange(0, 1 << 40)
        mutations = [record(rng, start + i + 1) for i in range(rng.randrange(0, 12))]
        through = start + len(mutations) + rng.randrange(0, 1000)
        built = batch_request([framed_mutation(mutation_to_pb(m)) for m in mutations], through)
        expected = message_built(mutations, through)
        assert rpb.ReplicateRequest.FromString(built) == expected
        assert len(built) == expected.ByteSize()


def test_the_comparison_tells_a_wrong_request_apart() -> None:
    """Negative control: a request missing a record, or through another position, is not taken
    for the batch."""
    rng = random.Random(1)
    mutations = [record(rng, i) for i in range(1, 4)]
    framed = [framed_mutation(mutation_to_pb(m)) for m in mutations]
    expected = message_built(mutations, 3)
    assert rpb.ReplicateRequest.FromString(batch_request(framed[:2], 3)) != expected
    assert rpb.ReplicateRequest.FromString(batch_request(framed, 4)) != expected


def test_an_empty_batch_only_moves_the_position() -> None:
    request = rpb.ReplicateRequest.FromString(batch_request([], 42))
    assert request.WhichOneof("kind") == "batch"
    assert request.batch.through_lsn == 42 and not request.batch.mutations


def test_the_serializer_passes_bytes_through_and_serializes_messages() -> None:
    hello = rpb.ReplicateRequest(hello=rpb.ReplicationHello(source_node_id="n1"))
    assert serialize_request(hello) == hello.SerializeToString()
    built = batch_request([], 7)
    assert serialize_request(built) is built
