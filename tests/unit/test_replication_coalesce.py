"""Grouping the batches of a replication stream that arrived together (node.replication.coalesce):
which batches apply as one, and how a stream's messages are grouped as they arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from domicile import errors
from domicile.v1 import record_pb2 as pb
from domicile.v1 import replication_pb2 as rpb
from node.replication import coalesce


def muts(*lsns: int) -> list[pb.Mutation]:
    return [pb.Mutation(namespace="n", key=f"k{lsn}", lsn=lsn) for lsn in lsns]


def positions_ok(position: int, messages: Sequence[pb.Mutation], through: int) -> str:
    """The receiver's rule, reduced to what these tests exercise: a gap of at most 100."""
    return "too far" if through - position > 100 else ""


def test_batches_that_follow_on_apply_as_one_in_order() -> None:
    batches = [(muts(1, 2), 2), (muts(3), 3), (muts(5), 6)]
    run = coalesce.next_run(0, batches, 0, positions_ok)
    assert (run.start, run.end) == (0, 3)
    assert run.merged is not None
    merged, through = run.merged
    assert [m.lsn for m in merged] == [1, 2, 3, 5]
    assert through == 6


def test_a_batch_from_before_the_position_ends_the_run_and_goes_alone() -> None:
    batches = [(muts(4), 4), (muts(5), 5), (muts(5), 5), (muts(6), 6)]
    first = coalesce.next_run(3, batches, 0, positions_ok)
    assert (first.start, first.end) == (0, 2) and first.merged is not None
    # Applied alone, as apply_batch would: a duplicate after a reconnect.
    second = coalesce.next_run(5, batches, 2, positions_ok)
    assert (second.start, second.end, second.merged) == (2, 3, None)
    third = coalesce.next_run(5, batches, 3, positions_ok)
    assert (third.start, third.end, third.merged) == (3, 4, None)


def test_a_batch_that_breaks_the_position_rule_is_not_merged() -> None:
    batches = [(muts(1), 1), (muts(2), 2), (muts(500), 500), (muts(501), 501)]
    run = coalesce.next_run(0, batches, 0, positions_ok)
    assert (run.start, run.end) == (0, 2)
    alone = coalesce.next_run(2, batches, 2, positions_ok)
    assert alone.merged is None and alone.end == 3


def test_a_run_stops_at_the_records_bound_but_always_takes_one() -> None:
    batches = [(muts(*range(1, 11)), 10), (muts(*range(11, 21)), 20), (muts(21), 21)]
    run = coalesce.next_run(0, batches, 0, positions_ok, records_max=15)
    assert run.merged is None and run.end == 1
    run = coalesce.next_run(0, batches, 0, positions_ok, records_max=20)
    assert run.end == 2


def batch(through: int, *lsns: int) -> rpb.ReplicateRequest:
    return rpb.ReplicateRequest(batch=rpb.ReplicationBatch(mutations=muts(*lsns), through_lsn=through))


class Feed:
    """A stream whose messages the test releases when it wants."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[rpb.ReplicateRequest | None] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[rpb.ReplicateRequest]:
        while (item := await self.queue.get()) is not None:
            yield item


async def test_batches_waiting_together_come_out_as_one_group() -> None:
    feed = Feed()
    for i in range(1, 4):
        feed.queue.put_nowait(batch(i, i))
    groups = coalesce.received_together(feed.__aiter__())
    first = await anext(groups)
    # The pump may not have read them all yet when the first is handed over; together they are
    # the three batches in order, and none is handed over twice.
    seen = [through for _, through in first]
    while len(seen) < 3:
        seen += [through for _, through in await anext(groups)]
    assert seen == [1, 2, 3]
    feed.queue.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await anext(groups)


async def test_a_message_other_than_a_batch_fails_the_stream_after_the_batches_before_it() -> None:
    feed = Feed()
    feed.queue.put_nowait(batch(1, 1))
    feed.queue.put_nowait(rpb.ReplicateRequest(hello=rpb.ReplicationHello(source_node_id="x")))
    feed.queue.put_nowait(batch(2, 2))
    groups = coalesce.received_together(feed.__aiter__())
    handed: list[int] = []
    with pytest.raises(errors.InvalidArgument, match="only batches"):
        async for group in groups:
            handed += [through for _, through in group]
    assert handed == [1]


async def test_a_group_holds_at_most_the_records_bound() -> None:
    feed = Feed()
    feed.queue.put_nowait(batch(3, 1, 2, 3))
    feed.queue.put_nowait(batch(6, 4, 5, 6))
    feed.queue.put_nowait(None)
    groups = [g async for g in coalesce.received_together(feed.__aiter__(), records_max=4)]
    assert [[through for _, through in g] for g in groups] == [[3], [6]]


async def test_the_stream_is_not_read_past_the_bytes_held(monkeypatch: pytest.MonkeyPatch) -> None:
    one = batch(1, 1).ByteSize()
    monkeypatch.setattr(coalesce, "RECEIVED_BYTES_MAX", 3 * one)
    pulled = 0

    async def eager() -> AsyncIterator[rpb.ReplicateRequest]:
        nonlocal pulled
        for i in range(1, 21):
            pulled += 1
            yield batch(i, i)

    groups = coalesce.received_together(eager())
    handed = [through for _, through in await anext(groups)]
    for _ in range(20):
        await asyncio.sleep(0)
    # A source that sends without waiting for acks is read only as far as the bound past what
    # was handed over (and the one message the pump holds while it waits for room).
    assert len(handed) < pulled <= len(handed) + 3 + 1
    handed += [through for group in [g async for g in groups] for _, through in group]
    assert handed == list(range(1, 21))
