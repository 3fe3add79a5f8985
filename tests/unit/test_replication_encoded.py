"""Wire messages encoded once for every link: the same bytes as encoding each time, shared only
for the same write, bounded."""

from __future__ import annotations

from domicile.causality import CausalContext, Dot, Mutation, Version
from domicile.wire.records import mutation_to_pb
from node.replication.encoded import EncodedLog


def write(lsn: int, hlc: int = 1000, key: str = "k") -> Mutation:
    version = Version(dot=Dot("n1", lsn), value=b"value", hlc=hlc, origin_region="eu-west-1")
    return Mutation("orders", key, CausalContext.empty(), version, lsn=lsn, origin_node_id="n1")


def test_a_shared_message_is_the_message_encoded_alone() -> None:
    log = EncodedLog()
    m = write(7)
    first = log.message(m)
    assert first.SerializeToString() == mutation_to_pb(m).SerializeToString()
    assert log.message(write(7)) is first  # the next link copies it
    assert (log.hits, log.misses) == (1, 1)


def test_another_write_at_the_same_position_is_not_taken_for_the_first() -> None:
    """A store rebuilt from a backup numbers positions again: the position alone is not a write."""
    log = EncodedLog()
    before = log.message(write(3, hlc=1000, key="a"))
    after = log.message(write(3, hlc=2000, key="b"))
    assert before.key == "a" and after.key == "b"


def test_the_oldest_messages_make_room() -> None:
    log = EncodedLog(entries_max=3)
    for lsn in range(1, 6):
        log.message(write(lsn))
    assert len(log) == 3
    log.message(write(5))
    assert log.hits == 1
    log.message(write(1))  # dropped: encoded again
    assert log.misses == 6
