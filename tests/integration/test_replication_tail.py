"""Replication senders read the change log from the in-memory tail when the target is close
behind, and from the store otherwise; both give the same batches."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from domicile.causality import Mutation
from domicile.model import Limits
from domicile.v1 import storage_node_pb2 as spb
from node.replication.outbound import LinkSender
from tests.support.cluster import LocalCluster, eventually

SOURCE, TARGET = "eu-west-1", "eu-central-1"
TAIL_RECORDS = 8


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [SOURCE, TARGET])
    cluster.node_overrides["limits"] = Limits(log_tail_records_max=TAIL_RECORDS)
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


class Hops:
    """Counts the sender's store reads and value-opening hops off the event loop."""

    def __init__(self, sender: LinkSender) -> None:
        self.reads = 0
        self.opens = 0
        read_log, open_from = sender._read_log, sender._open_from

        def counted_read(*args: Any) -> Any:
            self.reads += 1
            return read_log(*args)

        def counted_open(*args: Any) -> Any:
            self.opens += 1
            return open_from(*args)

        sender._read_log = counted_read  # type: ignore[method-assign]
        sender._open_from = counted_open  # type: ignore[method-assign]


async def from_store(sender: LinkSender, after_lsn: int) -> tuple[list[Mutation], int] | None:
    tail, sender.log_tail = sender.log_tail, None
    try:
        return await sender.next_batch(after_lsn)
    finally:
        sender.log_tail = tail


async def write_and_replicate(cluster: LocalCluster, writes: list[Callable[[], Any]]) -> int:
    for write in writes:
        await write()
    source = cluster.nodes[SOURCE]
    last = source.engine.last_lsn()
    sender = source.replication.senders[TARGET]

    async def caught_up() -> bool:
        return sender.acked_lsn >= last

    await eventually(caught_up, 10, "target caught up")
    return last


def sender_of(cluster: LocalCluster) -> LinkSender:
    return cluster.nodes[SOURCE].replication.senders[TARGET]


async def test_a_close_target_is_served_from_memory_without_a_hop(pair: LocalCluster) -> None:
    sender = sender_of(pair)
    hops = Hops(sender)
    last = await write_and_replicate(
        pair, [lambda i=i: pair.put(SOURCE, "instruments", f"i{i}", b"v%d" % i) for i in range(5)]
    )
    # The link itself shipped every write without reading the store.
    assert (hops.reads, hops.opens) == (0, 0)
    served = await sender.next_batch(last - 3)
    assert (hops.reads, hops.opens) == (0, 0)
    assert served is not None and [m.lsn for m in served[0]] == [last - 2, last - 1, last]
    assert served == await from_store(sender, last - 3)
    assert hops.reads == 1
    # Nothing new: no batch, and still no hop.
    assert await sender.next_batch(last) is None
    assert hops.reads == 1


async def test_sealed_values_are_opened_in_one_hop_and_match_the_store(pair: LocalCluster) -> None:
    async def delete(key: str) -> None:
        await pair.stub(SOURCE).Delete(spb.DeleteRequest(namespace="customers_eu", key=key), timeout=5)

    writes: list[Callable[[], Any]] = [
        lambda: pair.put(SOURCE, "customers_eu", "c1", b"ada", subject_id="s-1", subject_jurisdiction="DE"),
        lambda: pair.put(SOURCE, "instruments", "plain", b"p"),
        lambda: pair.put(SOURCE, "customers_eu", "c2", b"bob", subject_id="s-2", subject_jurisdiction="FR"),
        lambda: delete("c1"),
    ]
    last = await write_and_replicate(pair, writes)
    source = pair.nodes[SOURCE]
    sender = sender_of(pair)
    hops = Hops(sender)
    served = await sender.next_batch(last - 4)
    assert (hops.reads, hops.opens) == (0, 1)
    assert served is not None
    assert {m.version.value for m in served[0] if not m.version.tombstone} == {b"ada", b"p", b"bob"}
    assert served == await from_store(sender, last - 4)
    # What the tail holds is what the store holds: sealed values, tombstones and all.
    held = source.log_tail.read(last - 4, 10)
    assert held is not None and held[0] == source.engine.read_log(last - 4, 10)
    assert b"ada" not in b"".join(m.version.value for m in held[0])
    # A tombstone and a plain value need no opening: no hop at all.
    hops.opens = 0
    served = await sender.next_batch(last - 1)
    assert (hops.reads, hops.opens) == (1, 0)  # the one read is from_store's above
    assert served is not None and served[0][0].version.tombstone


async def test_a_target_behind_the_tail_is_served_from_the_store(pair: LocalCluster) -> None:
    writes = [lambda i=i: pair.put(SOURCE, "instruments", f"k{i}", b"v") for i in range(TAIL_RECORDS + 5)]
    last = await write_and_replicate(pair, writes)
    source = pair.nodes[SOURCE]
    assert len(source.log_tail) == TAIL_RECORDS
    sender = sender_of(pair)
    hops = Hops(sender)
    # Just inside the tail: from memory.
    inside = await sender.next_batch(last - TAIL_RECORDS)
    assert hops.reads == 0
    assert inside == await from_store(sender, last - TAIL_RECORDS)
    # One entry further back, and from the start: from the store, the same batches as ever.
    hops.reads = 0
    behind = await sender.next_batch(last - TAIL_RECORDS - 1)
    assert hops.reads == 1
    assert behind is not None and behind[0][0].lsn == last - TAIL_RECORDS
    assert behind == await from_store(sender, last - TAIL_RECORDS - 1)
    everything = await sender.next_batch(0)
    assert hops.reads == 3
    assert everything is not None and [m.lsn for m in everything[0]] == list(range(1, last + 1))


async def test_after_a_restart_the_sender_reads_the_store_then_the_tail(pair: LocalCluster) -> None:
    writes = [lambda i=i: pair.put(SOURCE, "instruments", f"r{i}", b"v") for i in range(3)]
    last = await write_and_replicate(pair, writes)
    await pair.stop_node(SOURCE)
    await pair.start_node(SOURCE)
    await pair.wait_linked()
    source = pair.nodes[SOURCE]
    assert len(source.log_tail) == 0 and source.log_tail.last_lsn == last
    sender = sender_of(pair)
    hops = Hops(sender)
    # The new tail holds nothing from before the restart.
    before = await sender.next_batch(last - 2)
    assert hops.reads == 1
    assert before is not None and [m.lsn for m in before[0]] == [last - 1, last]
    assert await sender.next_batch(last) is None
    assert hops.reads == 1
    # What is written after the restart replicates, from the tail.
    last = await write_and_replicate(pair, [lambda: pair.put(SOURCE, "instruments", "after", b"a")])
    served = await sender.next_batch(last - 1)
    assert hops.reads == 1
    assert served is not None and [m.key for m in served[0]] == ["after"]

    async def arrived() -> bool:
        return await pair.values(TARGET, "instruments", "after") == {b"a"}

    await eventually(arrived, 10, "the write after the restart at the target")
