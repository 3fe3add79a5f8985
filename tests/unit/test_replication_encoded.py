"""Records encoded once for every link: the same bytes as encoding each time, shared only for the
same write, bounded."""

from __future__ import annotations

from domicile.causality import CausalContext, Dot, Mutation, Version
from domicile.v1 import replication_pb2 as rpb
from domicile.wire.records import mutation_to_pb
from node.replication.batch_wire import framed_mutation
from node.replication.encoded import EncodedLog


def write(lsn: int, hlc: int = 1000, key: str = "k") -> Mutation:
    version = Version(dot=Dot("n1", lsn), value=b"value", hlc=hlc, origin_region="eu-west-1")
    return Mutation("orders", key, CausalContext.empty(), version, lsn=lsn, origin_node_id="n1")


def test_shared_bytes_are_the_record_encoded_alone() -> None:
    log = EncodedLog()
    m = write(7)
    first = log.framed(m)
    assert first == framed_mutation(mutation_to_pb(m))
    assert rpb.ReplicationBatch.FromString(first).mutations[0] == mutation_to_pb(m)
    assert log.framed(write(7)) is first  # the next link joins the same bytes
    assert (log.hits, log.misses) == (1, 1)


def test_another_write_at_the_same_position_is_not_taken_for_the_first() -> None:
    """A store rebuilt from a backup numbers positions again: the position alone is not a write."""
    log = EncodedLog()
    before = log.framed(write(3, hlc=1000, key="a"))
    after = log.framed(write(3, hlc=2000, key="b"))
    assert rpb.ReplicationBatch.FromString(before).mutations[0].key == "a"
    assert rpb.ReplicationBatch.FromString(after).mutations[0].key == "b"


def test_the_oldest_messages_make_room() -> None:
    log = EncodedLog(entries_max=3)
    for lsn in range(1, 6):
        log.framed(write(lsn))
    assert len(log) == 3
    log.framed(write(5))
    assert log.hits == 1
    log.framed(write(1))  # dropped: encoded again
    assert log.misses == 6
