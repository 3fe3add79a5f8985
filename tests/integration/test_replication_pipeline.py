"""Pipelined acknowledgements between in-process nodes on real sockets: with many batches in
flight, acks that arrive out of order, acks that are lost and streams cut mid-window lose no
record and apply none twice; and batches that arrive together are applied as one, each refusal
still its own batch's."""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from domicile.model import Limits
from domicile.v1 import replication_pb2 as rpb
from node.api.replication import ReplicationServicer
from tests.support.cluster import LocalCluster, eventually
from tests.support.rogue import audit_entries, mutation, rejected

SOURCE, TARGET = "eu-west-1", "eu-central-1"
NAMESPACE = "customers_eu"
ROUND_RECORDS = 40
# Each round ends once the target has applied it, so it passes at least one ack through the
# chaos (however many batches the target applied together under one ack): the faults then
# depend on the seed alone. No seed of the first 100,000 needs more than 100 acks to see
# every fault FAULTS_MIN times.
ROUNDS_MAX = 120
# Small batches, so that the records travel in many of them and the window holds dozens.
BATCH_RECORDS = 4
# Each fault at least this often; then acks pass, so that the run ends with everything acked.
FAULTS_MIN = 2


@dataclass
class Chaos:
    """What the target's ack stream suffered, so that the test knows each fault happened."""

    rng: random.Random
    acks_seen: int = 0
    dropped: int = 0
    swapped: int = 0
    cut: int = 0

    @property
    def done(self) -> bool:
        return min(self.dropped, self.swapped, self.cut) >= FAULTS_MIN


def chaotic_replicate(chaos: Chaos) -> Any:
    original = ReplicationServicer.Replicate

    async def replicate(
        self: ReplicationServicer,
        requests: AsyncIterator[rpb.ReplicateRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpb.ReplicateResponse]:
        responses = original(self, requests, context)
        held: rpb.ReplicateResponse | None = None
        try:
            async for response in responses:
                if response.WhichOneof("kind") != "ack" or chaos.done:
                    yield response
                    if held is not None:
                        yield held
                        held = None
                    continue
                chaos.acks_seen += 1
                roll = chaos.rng.random()
                if roll < 0.2:
                    chaos.dropped += 1  # lost: a later ack must cover it
                elif roll < 0.55 and held is None:
                    held = response  # sent after the next one: out of order
                elif roll < 0.6:
                    chaos.cut += 1  # the stream breaks with batches in flight
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the test cut the stream")
                else:
                    yield response
                    if held is not None:
                        chaos.swapped += 1
                        yield held
                        held = None
        finally:
            await responses.aclose()

    return replicate


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("REPLICATION_PIPELINE_SEED", random.randrange(1 << 32)))
    print(f"replication pipeline seed {value} (replay: REPLICATION_PIPELINE_SEED={value})")
    return value


async def start_pair(tmp_path: Path) -> LocalCluster:
    cluster = LocalCluster(tmp_path, [SOURCE, TARGET])
    cluster.node_overrides["limits"] = Limits(replication_batch_records_max=BATCH_RECORDS)
    # Streams only: an anti-entropy round (run at once when the target sees the source miss
    # heartbeats, as on a busy machine) would pull records ahead of the held-back stream, and
    # the stream would then find them applied.
    cluster.node_overrides["antientropy_interval_s"] = 0
    return await cluster.start_linked()


async def write_concurrently(cluster: LocalCluster, prefix: str, count: int) -> None:
    semaphore = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with semaphore:
            await cluster.put(SOURCE, NAMESPACE, f"{prefix}{i:04}", f"v{i}".encode())

    await asyncio.gather(*(one(i) for i in range(count)))


async def test_lost_reordered_acks_and_cut_streams_lose_nothing_and_apply_nothing_twice(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    chaos = Chaos(random.Random(seed))
    monkeypatch.setattr(ReplicationServicer, "Replicate", chaotic_replicate(chaos))
    cluster = await start_pair(tmp_path)
    try:
        source, target = cluster.nodes[SOURCE], cluster.nodes[TARGET]
        rounds = 0
        while not chaos.done and rounds < ROUNDS_MAX:
            await write_concurrently(cluster, f"r{rounds:03}-", ROUND_RECORDS)
            rounds += 1
            written = source.engine.last_lsn()

            async def applied(through: int = written) -> bool:
                return target.engine.inbound_position(SOURCE) >= through

            await eventually(applied, 60, f"round {rounds} applied at the target")
        # Past the chaos: an ack that covers everything arrives whatever happened before.
        await cluster.put(SOURCE, NAMESPACE, "last", b"last")
        last = source.engine.last_lsn()
        sender = source.replication.senders[TARGET]

        async def caught_up() -> bool:
            return sender.acked_lsn >= last and target.engine.inbound_position(SOURCE) >= last

        await eventually(caught_up, 60, "target caught up through the chaos")
        print(
            f"seed {seed}: {rounds} rounds, acks {chaos.acks_seen}, dropped {chaos.dropped}, "
            f"swapped {chaos.swapped}, cut {chaos.cut}"
        )
        assert chaos.done, f"seed {seed}: not every fault happened in {rounds} rounds: {chaos}"
        for r in range(rounds):
            for i in range(ROUND_RECORDS):
                state = target.engine.get(NAMESPACE, f"r{r:03}-{i:04}")
                assert state is not None, f"seed {seed}: r{r:03}-{i:04} lost"
                assert [v.value for v in state.versions] == [f"v{i}".encode()]
        # Every log position of the source applied exactly once at the target: one audited
        # receive each, none twice, none missing (once the audit log holds what the applies
        # carried: it appends them after the commits, together).
        await target.audit.flush()
        received = Counter(
            int(match.group(1))
            for entry in audit_entries(target)
            if entry["action"] == "replicate_receive"
            and entry["decision"] == "allow"
            and (match := re.search(rf"from={SOURCE} lsn=(\d+)", entry["detail"]))
        )
        assert set(received) == set(range(1, last + 1)), f"seed {seed}"
        assert max(received.values()) == 1, f"seed {seed}: applied twice {received.most_common(3)}"
        assert target.receiver.stats[SOURCE].applied_total == last
    finally:
        await cluster.stop()


async def test_batches_received_together_apply_as_one_and_a_bad_one_alone(tmp_path: Path) -> None:
    cluster = await start_pair(tmp_path)
    try:
        target = cluster.nodes[TARGET]
        receiver = target.receiver
        # A writer id no node uses, so that the positions are this test's alone.
        source = "eu-west-1.7"
        start = await receiver.open(source)
        gap_max = receiver.limits.replication_position_gap_max
        batches = [
            ([mutation(source, start + 1, "a"), mutation(source, start + 2, "b")], start + 2),
            ([mutation(source, start + 3, "c")], start + 3),
            # Too far past the position: refused whole, alone.
            ([mutation(source, start + 4, "bad")], start + 3 + gap_max + 1),
            ([mutation(source, start + 4, "d")], start + 4),
            # Before the position once d is applied: a duplicate after a reconnect.
            ([mutation(source, start + 4, "d")], start + 4),
            ([mutation(source, start + 5, "e")], start + 6),
        ]
        # The applies of this source's batches (one transaction each), not every commit of the
        # node: a topology revision adopted meanwhile (a busy machine makes nodes miss
        # heartbeats) commits too.
        commits = 0
        engine = target.engine
        apply_remote = engine.apply_remote

        def counted(source_node_id: str, mutations: Any, through_lsn: int, audit: Any = ()) -> Any:
            nonlocal commits
            commits += source_node_id == source
            return apply_remote(source_node_id, mutations, through_lsn, audit)

        engine.apply_remote = counted  # type: ignore[method-assign]
        result = await receiver.apply_batches(source, batches)
        assert result.through_lsn == start + 6
        assert (result.refused, result.duplicates) == (1, 1)
        # a+b+c as one commit, d alone (after the refusal, it starts a run cut by the
        # duplicate), e alone: three commits for five applied batches.
        assert commits == 3
        assert rejected(target, source, "position") == 1
        for key in ("a", "b", "c", "d", "e"):
            state = target.engine.get("instruments", key)
            assert state is not None, key
        assert target.engine.get("instruments", "bad") is None
        assert target.engine.inbound_position(source) == start + 6
    finally:
        await cluster.stop()


async def test_regression_a_stream_cut_while_its_batch_commits_still_counts_it(tmp_path: Path) -> None:
    # A source that waits too long for an ack cancels its stream; the target's commit of the
    # batch in hand cannot be called back. It used to go uncounted (applied_total fell short of
    # what the store holds), and a stream reopened meanwhile could start below it.
    cluster = await start_pair(tmp_path)
    try:
        receiver = cluster.nodes[TARGET].receiver
        source = "eu-west-1.9"  # a writer id no node uses
        start = await receiver.open(source)
        committed = asyncio.Event()
        resume = asyncio.Event()
        committer_run = receiver.committer.run

        async def commit_then_wait(fn: Any, **kw: Any) -> Any:
            outcome = await committer_run(fn, **kw)
            committed.set()
            await resume.wait()  # the stream is cut here, after the commit, before the count
            return outcome

        receiver.committer.run = commit_then_wait  # type: ignore[method-assign]
        applying = asyncio.create_task(
            receiver.apply_batches(source, [([mutation(source, start + 1, "cut-mid-commit")], start + 1)])
        )
        await committed.wait()
        applying.cancel()
        reopening = asyncio.create_task(receiver.open(source))
        resume.set()
        assert await reopening == start + 1
        with pytest.raises(asyncio.CancelledError):
            await applying
        assert receiver.stats[source].applied_total == 1
        assert cluster.nodes[TARGET].engine.get("instruments", "cut-mid-commit") is not None
    finally:
        await cluster.stop()
