"""GroupCommitter over every engine of the contract suite.

Tests that need writes to pile up first park the writer thread on a gate job (a job blocked
on a threading.Event), queue the writes, then open the gate: batching is then deterministic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Sequence

import pytest

from domicile.audit import AuditEntry
from domicile.causality import CausalContext, Mutation
from domicile.errors import DomicileError, InvalidArgument, ResourceExhausted, Unavailable
from node.engine.base import ApplyOutcome, Committed, LocalWrite, StorageEngine, StoreCounts
from node.engine.group_commit import GroupCommitter

from .harness import EngineHarness

Stamp = Callable[[], int]


def put(key: str, value: bytes = b"v") -> LocalWrite:
    return LocalWrite(namespace="o", key=key, value=value)


class Gate:
    """Holds the writer thread inside a job until opened."""

    def __init__(self, committer: GroupCommitter) -> None:
        self._event = threading.Event()
        self._entered = threading.Event()
        self.task = asyncio.ensure_future(committer.run(self._hold))

    def _hold(self, engine: StorageEngine) -> None:
        self._entered.set()
        self._event.wait()

    def wait_entered(self) -> None:
        self._entered.wait()

    def release(self) -> None:
        self._event.set()

    async def open(self) -> None:
        self.release()
        await self.task


class Writers:
    """Starts committers and gates; whatever a test leaves open is released and stopped."""

    def __init__(self, engine: StorageEngine, stamp: Stamp) -> None:
        self.engine = engine
        self.stamp = stamp
        self.committers: list[GroupCommitter] = []
        self.gates: list[Gate] = []

    def start(
        self,
        *,
        batch: int = 64,
        queue: int = 1000,
        jobs: int = 64,
        queue_bytes: int = 1 << 40,
        engine: StorageEngine | None = None,
    ) -> GroupCommitter:
        committer = GroupCommitter(
            engine or self.engine,
            self.stamp,
            batch_records_max=batch,
            queue_records_max=queue,
            queue_jobs_max=jobs,
            queue_bytes_max=queue_bytes,
        )
        committer.start()
        self.committers.append(committer)
        return committer

    async def hold(self, committer: GroupCommitter) -> Gate:
        """Parks the writer thread; returns once it is parked."""
        gate = Gate(committer)
        self.gates.append(gate)
        await asyncio.to_thread(gate.wait_entered)
        return gate

    async def close(self) -> None:
        for gate in self.gates:
            gate.release()
        for committer in self.committers:
            await committer.stop()


async def queued(committer: GroupCommitter, records: int = 0, jobs: int = 0) -> None:
    """Yields to the loop until the submitting tasks have queued their writes and jobs."""
    while committer.queued_records < records or committer.queued_jobs < jobs:  # noqa: ASYNC110
        await asyncio.sleep(0)


@pytest.fixture
async def writers(engine: StorageEngine, stamp: Stamp):
    w = Writers(engine, stamp)
    yield w
    await w.close()


@pytest.fixture
def committer(writers: Writers) -> GroupCommitter:
    return writers.start()


async def test_concurrent_submits_share_commits(
    writers: Writers, committer: GroupCommitter, engine: StorageEngine
) -> None:
    gate = await writers.hold(committer)
    tasks = [asyncio.ensure_future(committer.submit(put(f"k{i:03}"))) for i in range(200)]
    await queued(committer, 200)
    await gate.open()
    results = await asyncio.gather(*tasks)
    # Queue order is commit order.
    assert [r.mutation.key for r in results] == [f"k{i:03}" for i in range(200)]
    assert [r.mutation.lsn for r in results] == list(range(1, 201))
    assert committer.batches_committed == 4  # 64 + 64 + 64 + 8
    assert committer.records_committed == 200
    assert committer.last_batch_records == 8
    assert engine.counts() == StoreCounts(records=200, tombstones=0)


async def test_unsynchronised_submits_commit_in_fewer_transactions_than_writes(
    committer: GroupCommitter, engine: StorageEngine
) -> None:
    results = await asyncio.gather(*(committer.submit(put(f"k{i}")) for i in range(300)))
    assert sorted(r.mutation.lsn for r in results) == list(range(1, 301))
    assert committer.records_committed == 300
    assert committer.batches_committed < 300
    assert engine.last_lsn() == 300


async def test_the_queue_admits_value_bytes_up_to_its_bound(writers: Writers, engine: StorageEngine) -> None:
    committer = writers.start(queue_bytes=1000)
    gate = await writers.hold(committer)
    # An empty queue takes a write of any size, so a value at the limit always fits.
    first = asyncio.ensure_future(committer.submit(put("big", b"x" * 1500)))
    await queued(committer, 1)
    assert committer.queued_bytes == 1500
    with pytest.raises(ResourceExhausted, match=r"1500 bytes of values waiting.*limit of 1000 bytes"):
        await committer.submit(put("refused", b"y"))
    assert committer.queued_bytes == 1500
    await gate.open()
    await first
    assert committer.queued_bytes == 0
    small = await asyncio.gather(*(committer.submit(put(f"s{i}", b"z" * 100)) for i in range(5)))
    assert len(small) == 5 and committer.queued_bytes == 0
    assert engine.get("o", "refused") is None


async def test_refused_writes_give_their_bytes_back(writers: Writers, engine: StorageEngine) -> None:
    committer = writers.start(queue_bytes=1000)
    gate = await writers.hold(committer)
    pending = asyncio.ensure_future(committer.submit(put("k", b"x" * 400)))
    await queued(committer, 1)
    await gate.open()
    await pending
    # A write the engine refuses (a tombstone with a value) also leaves the queue's count.
    refused = LocalWrite(namespace="o", key="t", value=b"v" * 300, tombstone=True)
    with pytest.raises(InvalidArgument):
        await committer.submit(refused)
    assert committer.queued_bytes == 0


async def test_a_full_queue_refuses_at_once(writers: Writers, engine: StorageEngine) -> None:
    committer = writers.start(batch=2, queue=5)
    gate = await writers.hold(committer)
    tasks = [asyncio.ensure_future(committer.submit(put(f"k{i}"))) for i in range(5)]
    await queued(committer, 5)
    with pytest.raises(ResourceExhausted, match="5 writes"):
        await committer.submit(put("one-too-many"))
    await gate.open()
    assert [r.mutation.lsn for r in await asyncio.gather(*tasks)] == [1, 2, 3, 4, 5]
    assert committer.batches_committed == 3
    # Room again once drained.
    assert (await committer.submit(put("later"))).mutation.lsn == 6
    assert engine.get("o", "one-too-many") is None


async def test_a_full_job_queue_refuses_at_once(writers: Writers) -> None:
    committer = writers.start(jobs=2)
    gate = await writers.hold(committer)
    jobs = [asyncio.ensure_future(committer.run(lambda e: e.last_lsn())) for _ in range(2)]
    await queued(committer, jobs=2)
    with pytest.raises(ResourceExhausted, match="2 jobs"):
        await committer.run(lambda e: e.last_lsn())
    # Writes have their own bound.
    write = asyncio.ensure_future(committer.submit(put("k")))
    await gate.open()
    assert await asyncio.gather(*jobs) == [0, 0]
    assert (await write).mutation.lsn == 1


async def test_stop_drains_what_was_accepted(writers: Writers, engine: StorageEngine) -> None:
    committer = writers.start(batch=3)
    gate = await writers.hold(committer)
    tasks = [asyncio.ensure_future(committer.submit(put(f"k{i}"))) for i in range(10)]
    await queued(committer, 10)
    stopper = threading.Thread(target=committer.close)
    stopper.start()
    while committer.running:  # noqa: ASYNC110
        await asyncio.sleep(0)
    with pytest.raises(Unavailable, match="stopped"):
        await committer.submit(put("after-stop"))
    with pytest.raises(Unavailable):
        await committer.run(lambda e: None)
    await gate.open()
    results = await asyncio.gather(*tasks)
    await asyncio.to_thread(stopper.join)
    assert [r.mutation.lsn for r in results] == list(range(1, 11))
    assert committer.batches_committed == 4
    assert engine.counts() == StoreCounts(records=10, tombstones=0)
    assert engine.get("o", "after-stop") is None
    await committer.stop()  # stopping again is harmless


async def test_each_caller_gets_its_own_error(writers: Writers, committer: GroupCommitter) -> None:
    gate = await writers.hold(committer)
    writes = [
        put("good-1"),
        LocalWrite(namespace="Bad Namespace", key="k"),
        put("good-2"),
        LocalWrite(namespace="o", key="bad-delete", value=b"x", tombstone=True),
        put("good-3"),
    ]
    tasks = [asyncio.ensure_future(committer.submit(w)) for w in writes]
    await queued(committer, len(writes))
    await gate.open()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r) for r in results] == [Committed, InvalidArgument, Committed, InvalidArgument, Committed]
    assert "namespace" in str(results[1])
    assert "bad-delete" in str(results[3])
    assert [r.mutation.key for r in results if isinstance(r, Committed)] == ["good-1", "good-2", "good-3"]
    assert committer.records_committed == 3
    assert committer.batches_committed == 1


async def test_jobs_run_in_order_with_writes(
    harness: EngineHarness, writers: Writers, committer: GroupCommitter, engine: StorageEngine, stamp: Stamp
) -> None:
    remote = harness.open("remote", node_id="node-b")
    remote.commit_local([put("r")], stamp)
    log = remote.read_log(0, 10)

    def apply(mutations: Sequence[Mutation]) -> Callable[[StorageEngine], ApplyOutcome]:
        return lambda e: e.apply_remote("node-b", mutations, 1)

    gate = await writers.hold(committer)
    first = [asyncio.ensure_future(committer.submit(put(f"a{i}"))) for i in range(3)]
    seen = asyncio.ensure_future(committer.run(lambda e: e.last_lsn()))
    applied = asyncio.ensure_future(committer.run(apply(log)))
    later = asyncio.ensure_future(committer.submit(put("b")))
    await queued(committer, 4, 2)
    await gate.open()
    await asyncio.gather(*first)
    assert await seen == 3
    assert (await applied).position == 1
    assert (await later).mutation.lsn == 4
    assert engine.inbound_position("node-b") == 1
    assert committer.jobs_run == 3  # the gate and two jobs


async def test_a_failing_job_reports_to_its_caller_only(committer: GroupCommitter) -> None:
    def refuse(engine: StorageEngine) -> None:
        raise InvalidArgument("job refused")

    with pytest.raises(InvalidArgument, match="job refused"):
        await committer.run(refuse)
    assert (await committer.submit(put("k"))).mutation.lsn == 1


class _EngineFailingOnce:
    """The real engine, whose next commit fails as a full disk would."""

    def __init__(self, engine: StorageEngine) -> None:
        self._engine = engine
        self.node_id = engine.node_id
        self.region = engine.region
        self.fail_next = True

    def commit_local(self, writes: Sequence[LocalWrite], stamp: Stamp) -> list[Committed | DomicileError]:
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        return self._engine.commit_local(writes, stamp)

    def __getattr__(self, name: str) -> object:
        return getattr(self._engine, name)


async def test_an_engine_failure_reaches_every_writer_of_the_batch_and_the_writer_survives(
    writers: Writers, engine: StorageEngine
) -> None:
    committer = writers.start(engine=_EngineFailingOnce(engine))  # type: ignore[arg-type]
    gate = await writers.hold(committer)
    tasks = [asyncio.ensure_future(committer.submit(put(f"k{i}"))) for i in range(3)]
    await queued(committer, 3)
    await gate.open()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [str(r) for r in results] == ["disk full"] * 3
    assert (await committer.submit(put("k0"))).mutation.lsn == 1
    assert engine.last_lsn() == 1


async def test_a_cancelled_caller_does_not_disturb_the_others(
    writers: Writers, committer: GroupCommitter, engine: StorageEngine
) -> None:
    gate = await writers.hold(committer)
    cancelled = asyncio.ensure_future(committer.submit(put("cancelled")))
    kept = asyncio.ensure_future(committer.submit(put("kept")))
    await queued(committer, 2)
    cancelled.cancel()
    await gate.open()
    assert (await kept).mutation.lsn == 2
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    # The write was already accepted: it committed even though nobody waits for it.
    assert engine.get("o", "cancelled") is not None


async def test_submits_from_several_threads_and_loops(
    committer: GroupCommitter, engine: StorageEngine
) -> None:
    async def submit_many(t: int) -> list[int]:
        results = await asyncio.gather(*(committer.submit(put(f"t{t}-{i}")) for i in range(25)))
        return [r.mutation.lsn for r in results]

    def in_own_loop(t: int) -> list[int]:
        return asyncio.run(submit_many(t))

    per_thread = await asyncio.gather(*(asyncio.to_thread(in_own_loop, t) for t in range(4)), submit_many(99))
    lsns = sorted(lsn for part in per_thread for lsn in part)
    assert lsns == list(range(1, 126))
    assert engine.counts() == StoreCounts(records=125, tombstones=0)


async def test_submit_before_start_is_unavailable(engine: StorageEngine, stamp: Stamp) -> None:
    committer = GroupCommitter(engine, stamp, batch_records_max=1, queue_records_max=1)
    with pytest.raises(Unavailable, match="not started"):
        await committer.submit(put("k"))
    await committer.stop()


@pytest.mark.parametrize(
    ("batch", "queue", "jobs"),
    [(0, 10, 10), (10, 0, 10), (10, 10, 0), (-1, 10, 10)],
)
def test_bad_limits_are_refused(
    engine: StorageEngine, stamp: Stamp, batch: int, queue: int, jobs: int
) -> None:
    with pytest.raises(InvalidArgument, match="at least 1"):
        GroupCommitter(engine, stamp, batch_records_max=batch, queue_records_max=queue, queue_jobs_max=jobs)


async def test_start_twice_is_refused(committer: GroupCommitter) -> None:
    with pytest.raises(Unavailable):
        committer.start()


async def test_regression_a_write_the_guard_refuses_hands_on_no_audit_entry(
    committer: GroupCommitter,
) -> None:
    # Its allow entry would say the write was made; the caller audits the refusal instead
    # (node.service). A write the engine refuses still hands its entry on: the decision was made.
    def entry(key: str) -> AuditEntry:
        return AuditEntry(0, 1, 1, "r", "n", "client", "put", "o", key, decision="allow")

    handed: list[AuditEntry] = []
    committer.on_audit = lambda carried, direct: handed.extend([*(e for _, e in carried), *direct])
    refused = InvalidArgument("erased while in flight")
    committer.guard = lambda write: refused if write.key == "erased" else None
    # A context naming counters of this node it never issued for the key: the engine refuses it.
    forged = CausalContext.of({committer.engine.node_id: 5})
    over_limit = LocalWrite(namespace="o", key="forged", supersedes=forged, audit=entry("forged"))
    results = await committer.submit_many(
        [dataclasses.replace(put("erased"), audit=entry("erased")), over_limit]
    )
    assert results[0] is refused
    assert isinstance(results[1], DomicileError)
    assert [e.key for e in handed] == ["forged"]


async def test_a_submit_many_split_over_several_commits_answers_every_write_in_order(
    writers: Writers, engine: StorageEngine
) -> None:
    # One future serves the whole call: it must wait for the writes of every commit it spans.
    committer = writers.start(batch=4)
    gate = await writers.hold(committer)
    ahead = asyncio.ensure_future(committer.submit(put("ahead")))
    await queued(committer, 1)
    call = asyncio.ensure_future(
        committer.submit_many(
            [put("m0"), put("m1"), LocalWrite(namespace="Bad Namespace", key="k"), put("m3"), put("m4")]
        )
    )
    await queued(committer, 6)
    await gate.open()
    results = await call
    assert [type(r) for r in results] == [Committed, Committed, InvalidArgument, Committed, Committed]
    assert [r.mutation.key for r in results if isinstance(r, Committed)] == ["m0", "m1", "m3", "m4"]
    assert [r.mutation.lsn for r in results if isinstance(r, Committed)] == [2, 3, 4, 5]
    assert (await ahead).mutation.lsn == 1
    assert committer.batches_committed == 2  # ahead, m0, m1, bad; then m3, m4
    assert engine.counts() == StoreCounts(records=5, tombstones=0)


async def test_an_engine_failure_fails_a_submit_many_call(writers: Writers, engine: StorageEngine) -> None:
    committer = writers.start(engine=_EngineFailingOnce(engine))  # type: ignore[arg-type]
    gate = await writers.hold(committer)
    call = asyncio.ensure_future(committer.submit_many([put("k0"), put("k1")]))
    await queued(committer, 2)
    await gate.open()
    with pytest.raises(OSError, match="disk full"):
        await call
    assert committer.queued_bytes == 0
    assert [r.mutation.lsn for r in await committer.submit_many([put("k0"), put("k1")])] == [1, 2]  # type: ignore[union-attr]


async def test_a_submit_many_left_in_the_queue_at_stop_gets_unavailable_in_every_slot(
    writers: Writers, engine: StorageEngine
) -> None:
    committer = writers.start()
    gate = await writers.hold(committer)
    call = asyncio.ensure_future(committer.submit_many([put("late-0"), put("late-1")]))
    await queued(committer, 2)
    committer._writer.reject_queued(Unavailable("stopped before this write ran"))
    results = await call
    assert [type(r) for r in results] == [Unavailable, Unavailable]
    await gate.open()
    assert engine.get("o", "late-0") is None
