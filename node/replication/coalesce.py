"""Batches of a replication stream that arrived together, applied in one commit.

A source keeps many batches in flight (node.replication.window), so a target that is busy
committing one batch finds the next ones already waiting. Applying each alone costs a commit
(an fsync) and an audit flush per batch, and the queue grows faster than it drains. Instead the
target takes every batch already received (up to COALESCE_RECORDS_MAX mutations), and applies
each run of them that follows on cleanly as one: the result is the one applying them one after
another would give, for less than the price of one commit each.

"Follows on cleanly" is what apply_batch would accept one by one: each batch moves the position
forward (it is not a duplicate from before a reconnect) and passes the position rule from the
position the batch before it leaves. Any other batch is applied alone, exactly as before, so a
refusal of a whole batch stays a refusal of that batch. Every per-mutation check (origin,
limits, context, clock, erasure, policy, audit) does not depend on how mutations are grouped,
and the merge applies them in log order, so a run gives the state, the audit entries and the
position the batches would give one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from domicile import errors
from domicile.v1 import record_pb2 as pb
from domicile.v1 import replication_pb2 as rpb

# At most this many mutations in one coalesced commit (node.engine.core applies at most 10,000).
COALESCE_RECORDS_MAX = 2000
# Batches received but not yet applied, per stream, and their bytes. Past either the stream is
# not read, and HTTP/2 flow control holds the source back: a source that ignores its window
# cannot make the target hold more. An honest source has at most its window in flight
# (node.replication.window), 32 full batches' bytes by default.
RECEIVED_BATCHES_MAX = 1024
RECEIVED_BYTES_MAX = 64 * 1024 * 1024

Batch = tuple[Sequence[pb.Mutation], int]
# _check_positions of the receiver: (position, mutations, through_lsn) -> problem or "".
PositionCheck = Callable[[int, Sequence[pb.Mutation], int], str]


@dataclass(frozen=True)
class Run:
    """batches[start:end]; `merged` is their mutations in order and the last through_lsn when
    they are applied as one, None when batches[start] (end == start + 1) is applied alone."""

    start: int
    end: int
    merged: Batch | None


def next_run(
    position: int,
    batches: Sequence[Batch],
    start: int,
    check: PositionCheck,
    records_max: int = COALESCE_RECORDS_MAX,
) -> Run:
    """The run of batches from `start` that apply as one after `position`."""
    end = start
    records = 0
    at = position
    while end < len(batches):
        messages, through = batches[end]
        if through <= at or check(at, messages, through):
            break
        if end > start and records + len(messages) > records_max:
            break
        records += len(messages)
        at = through
        end += 1
    if end - start <= 1:
        return Run(start, start + 1, None)
    merged = [m for messages, _ in batches[start:end] for m in messages]
    return Run(start, end, (merged, batches[end - 1][1]))


async def received_together(
    requests: AsyncIterator[rpb.ReplicateRequest], records_max: int = COALESCE_RECORDS_MAX
) -> AsyncIterator[list[Batch] | rpb.ReplicationSnapshot]:
    """The stream's batches, in order, grouped as they arrived: each group is every batch that
    was waiting when the one before was handed over (at least one, and no more batches than
    fit in records_max mutations unless a single one is larger). A bootstrap part
    (node.replication.bootstrap) is handed over alone, in its place in the stream. Any other
    message fails the stream, in order: the batches before it are handed over first."""
    queue: asyncio.Queue[rpb.ReplicateRequest | BaseException | None] = asyncio.Queue(RECEIVED_BATCHES_MAX)
    queued_bytes = 0
    drained = asyncio.Event()

    async def pump() -> None:
        nonlocal queued_bytes
        try:
            async for request in requests:
                size = request.ByteSize()
                # One message is always let in, however large (the message size limit bounds it).
                while queued_bytes and queued_bytes + size > RECEIVED_BYTES_MAX:
                    drained.clear()
                    await drained.wait()
                queued_bytes += size
                await queue.put(request)
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)

    def take(
        item: rpb.ReplicateRequest | BaseException | None,
    ) -> rpb.ReplicateRequest | BaseException | None:
        nonlocal queued_bytes
        if isinstance(item, rpb.ReplicateRequest):
            queued_bytes -= item.ByteSize()
            drained.set()
        return item

    reader = asyncio.create_task(pump())
    held: rpb.ReplicateRequest | BaseException | None = None
    try:
        while True:
            item = held if held is not None else take(await queue.get())
            held = None
            group: list[Batch] = []
            records = 0
            while True:
                if item is None:
                    if group:
                        yield group
                    return
                if isinstance(item, BaseException):
                    if group:
                        held = item
                        break
                    raise item
                if item.WhichOneof("kind") != "batch":
                    if group:
                        held = item
                        break
                    if item.WhichOneof("kind") == "snapshot":
                        yield item.snapshot
                        break
                    raise errors.InvalidArgument(
                        "after the hello, a replication stream carries only batches and bootstrap parts"
                    )
                size = len(item.batch.mutations)
                if group and records + size > records_max:
                    held = item
                    break
                group.append((item.batch.mutations, item.batch.through_lsn))
                records += size
                if queue.empty():
                    break
                item = take(queue.get_nowait())
            if group:
                yield group
    finally:
        reader.cancel()
