"""The replication receiver checks everything a source sends, refuses what an honest source
never sends (counted, audited as the source, nothing stored), and keeps the stream and the
link working for the honest traffic that follows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from domicile.hlc import pack, wall_ms
from domicile.v1 import record_pb2 as pb
from tests.support.cluster import LocalCluster, eventually
from tests.support.negatives import audit_mark
from tests.support.rogue import ROGUE, RogueStream, audit_entries, mutation, rejected

SOURCE = ROGUE
# One cluster for the module (rogue_linked): each case reads where the rogue source's position
# stands and sends lsns after it, on keys of its own, and compares counters before and after.
pytestmark = pytest.mark.asyncio(loop_scope="module")


async def assert_link_works(cluster: LocalCluster, key: str) -> None:
    """The real link eu-west-1 -> eu-central-1 still carries a new write."""
    await cluster.put("eu-west-1", "instruments", key, b"honest")

    async def arrived() -> bool:
        return await cluster.values("eu-central-1", "instruments", key) == {b"honest"}

    await eventually(arrived, 10.0, f"{key} replicated after the refusal")


def refusals(entries: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["rule"] == rule and e["decision"] == "refuse"]


async def test_finding_position_claim_of_2_63_minus_1_does_not_stop_the_real_source(
    rogue_linked: LocalCluster,
) -> None:
    """Regression: a batch claiming position 2^63-1 for a source used to become the target's
    position, and every later batch of the real source was dropped as a duplicate."""
    target = rogue_linked.nodes["eu-central-1"]
    before = await rogue_linked.put("eu-west-1", "instruments", "before", b"1")

    async def caught_up() -> bool:
        return target.receiver.stats["eu-west-1"].position >= before.lsn

    await eventually(caught_up, 10.0, "the first write replicated")
    position = target.engine.inbound_position("eu-west-1")
    seq, refused_before = await audit_mark(target), rejected(target, "eu-west-1", "position")
    # With the real source's own certificate (a stolen key): authentication lets the stream in,
    # so the position rule alone must keep the real source's batches flowing.
    async with RogueStream(rogue_linked, target, "eu-west-1") as rogue:
        ack = await rogue.send([], (1 << 63) - 1)
        assert ack.applied_through_lsn == position
        assert ack.refused_count == 0
        ack = await rogue.send([mutation("eu-west-1", position + 1, "forged")], (1 << 63) - 1)
        assert ack.applied_through_lsn == position and ack.refused_count == 1
    assert target.engine.inbound_position("eu-west-1") == position
    assert target.engine.get("instruments", "forged") is None
    assert rejected(target, "eu-west-1", "position") == refused_before + 2
    entries = refusals(audit_entries(target, seq), "replication-position")
    assert entries and entries[0]["principal"] == "node:eu-west-1"
    assert "replication_position_gap_max" in entries[0]["detail"]
    await assert_link_works(rogue_linked, "after")


async def test_finding_hlc_past_2_63_does_not_invalidate_the_audit_log(rogue_linked: LocalCluster) -> None:
    """Regression: one replicated mutation with an HLC >= 2^63 was observed into the node's
    clock, every later audit entry was invalid, and the node refused all writes until restart."""
    target = rogue_linked.nodes["eu-central-1"]
    drift_before = rejected(target, SOURCE, "clock_drift")
    async with RogueStream(rogue_linked, target, SOURCE) as rogue:
        p = rogue.position
        ack = await rogue.send([mutation(SOURCE, p + 1, "future", hlc=1 << 63)], p + 1)
        assert ack.refused_count == 1 and ack.applied_through_lsn == p + 1
        ack = await rogue.send([mutation(SOURCE, p + 2, "present")], p + 2)
        assert ack.refused_count == 0 and ack.applied_through_lsn == p + 2
    assert target.engine.get("instruments", "future") is None
    assert target.engine.get("instruments", "present") is not None
    assert target.clock.now() < 1 << 63
    assert rejected(target, SOURCE, "clock_drift") == drift_before + 1
    written = await rogue_linked.put("eu-central-1", "customers_eu", "still-writable", b"v")
    assert written.lsn > 0
    report = target.audit.verify_local()
    assert report.ok, report.problems
    await assert_link_works(rogue_linked, "after-hlc")


def _ctx(entries: int) -> pb.CausalContext:
    return pb.CausalContext(version_vector={f"n{i}": 1 for i in range(entries)})


Build = Callable[[int], pb.Mutation]

# name, reason, the bad mutation at an lsn, and what its refusal's audit detail says.
MUTATION_CASES: list[tuple[str, str, Build, str]] = [
    (
        "origin names another node",
        "origin",
        lambda lsn: pb.Mutation(
            namespace="instruments",
            key="bad",
            lsn=lsn,
            origin_node_id="eu-west-1",
            version=mutation(SOURCE, lsn, "bad").version,
        ),
        "a source sends only its own writes",
    ),
    (
        "dot names another node",
        "origin",
        lambda lsn: _with_dot(mutation(SOURCE, lsn, "bad"), "eu-west-1"),
        "a source sends only its own writes",
    ),
    ("oversized key", "limits", lambda lsn: mutation(SOURCE, lsn, "k" * 1025), "limit is 1024 bytes"),
    (
        "oversized value",
        "limits",
        lambda lsn: mutation(SOURCE, lsn, "bad", b"x" * (1024 * 1024 + 1)),
        "limit is 1048576 bytes",
    ),
    (
        "oversized content type",
        "limits",
        lambda lsn: mutation(SOURCE, lsn, "bad", content_type="t" * 256),
        "content type is longer than 255 bytes",
    ),
    (
        "oversized subject id",
        "limits",
        lambda lsn: mutation(SOURCE, lsn, "bad", subject_id="s" * 257),
        "subject id is longer than 256 bytes",
    ),
    (
        "bad jurisdiction",
        "limits",
        lambda lsn: mutation(SOURCE, lsn, "bad", subject_jurisdiction="germany"),
        "ISO 3166",
    ),
    (
        "bad namespace name",
        "limits",
        lambda lsn: mutation(SOURCE, lsn, "bad", namespace="Bad-Name"),
        "invalid namespace",
    ),
    (
        "too many context entries",
        "limits",
        lambda lsn: _with_context(mutation(SOURCE, lsn, "bad"), _ctx(257)),
        "at most 256 allowed",
    ),
    (
        "unknown classification",
        "limits",
        lambda lsn: mutation(SOURCE, lsn, "bad", classification=42),
        "unknown classification value 42",
    ),
    (
        "dot counter past 2^62-1",
        "malformed",
        lambda lsn: mutation(SOURCE, lsn, "bad", counter=1 << 62),
        "counters are 1 to 2^62-1",
    ),
    (
        "tombstone with a value",
        "malformed",
        lambda lsn: mutation(SOURCE, lsn, "bad", tombstone=True),
        "tombstone with a value",
    ),
    (
        "HLC a minute ahead",
        "clock_drift",
        lambda lsn: mutation(SOURCE, lsn, "bad", hlc=pack(wall_ms() + 60_000, 0)),
        "at most 5000 ms is allowed",
    ),
    (
        "context names the target's counters beyond what it issued",
        "context",
        lambda lsn: _with_context(
            mutation(SOURCE, lsn, "bad"), pb.CausalContext(version_vector={"eu-central-1": (1 << 62) - 2})
        ),
        "it has issued up to 0",
    ),
]


def _with_dot(msg: pb.Mutation, node: str) -> pb.Mutation:
    msg.version.dot.node_id = node
    return msg


def _with_context(msg: pb.Mutation, context: pb.CausalContext) -> pb.Mutation:
    msg.context.CopyFrom(context)
    return msg


@pytest.mark.parametrize(
    ("name", "reason", "build", "detail"), MUTATION_CASES, ids=[c[0] for c in MUTATION_CASES]
)
async def test_a_bad_mutation_is_refused_alone_and_the_stream_keeps_working(
    rogue_linked: LocalCluster, name: str, reason: str, build: Build, detail: str
) -> None:
    target = rogue_linked.nodes["eu-central-1"]
    before = (target.engine.last_lsn(), target.engine.counts())
    seq, refused_before = await audit_mark(target), rejected(target, SOURCE, reason)
    ok = [f"{name}-ok-{i}" for i in (1, 3, 4)]
    async with RogueStream(rogue_linked, target, SOURCE) as rogue:
        p = rogue.position
        # The bad mutation between two honest ones: only it is refused, the batch acknowledged.
        batch = [mutation(SOURCE, p + 1, ok[0]), build(p + 2), mutation(SOURCE, p + 3, ok[1])]
        ack = await rogue.send(batch, p + 3)
        assert (ack.applied_through_lsn, ack.refused_count) == (p + 3, 1)
        ack = await rogue.send([mutation(SOURCE, p + 4, ok[2])], p + 4)
        assert (ack.applied_through_lsn, ack.refused_count) == (p + 4, 0)
    assert target.engine.get("instruments", "bad") is None
    assert all(target.engine.get("instruments", k) is not None for k in ok)
    assert target.engine.last_lsn() == before[0]
    assert target.engine.counts().records == before[1].records + 3
    assert rejected(target, SOURCE, reason) == refused_before + 1
    entries = refusals(audit_entries(target, seq), f"replication-{reason}")
    assert len(entries) == 1, entries
    assert entries[0]["principal"] == f"node:{SOURCE}"
    assert detail in entries[0]["detail"], entries[0]["detail"]
    await assert_link_works(rogue_linked, f"after-{name}")


# name, the batch's mutations (lsns after the position; 0 is never a valid lsn), its through_lsn
# after the position, and what the audit detail says ({through}: the absolute through_lsn).
BATCH_CASES: list[tuple[str, list[int], int, str]] = [
    ("lsns not increasing", [2, 1], 2, "lsns in a batch start at 1 and increase"),
    ("a repeated lsn", [1, 1], 1, "lsns in a batch start at 1 and increase"),
    ("lsn zero", [0], 1, "lsns in a batch start at 1 and increase"),
    ("a mutation past through_lsn", [1, 5], 4, "past the batch's through_lsn {through}"),
    ("through_lsn beyond the gap", [1], 10_001, "a batch may move it at most 10000"),
]


@pytest.mark.parametrize(("name", "lsns", "through", "detail"), BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
async def test_a_batch_with_bad_positions_is_refused_whole_and_the_stream_keeps_working(
    rogue_linked: LocalCluster, name: str, lsns: list[int], through: int, detail: str
) -> None:
    target = rogue_linked.nodes["eu-central-1"]
    before = (target.engine.last_lsn(), target.engine.counts())
    seq, refused_before = await audit_mark(target), rejected(target, SOURCE, "position")
    ok = f"{name}-ok"
    async with RogueStream(rogue_linked, target, SOURCE) as rogue:
        p = rogue.position
        batch = [mutation(SOURCE, p + lsn if lsn else 0, f"bad-{i}") for i, lsn in enumerate(lsns)]
        ack = await rogue.send(batch, p + through)
        # Nothing acknowledged: the position stays where it was.
        assert (ack.applied_through_lsn, ack.refused_count) == (p, len(lsns))
        assert target.engine.inbound_position(SOURCE) == p
        ack = await rogue.send([mutation(SOURCE, p + 1, ok)], p + 1)
        assert (ack.applied_through_lsn, ack.refused_count) == (p + 1, 0)
    assert all(target.engine.get("instruments", f"bad-{i}") is None for i in range(len(lsns)))
    assert target.engine.get("instruments", ok) is not None
    assert (target.engine.last_lsn(), target.engine.counts().records) == (before[0], before[1].records + 1)
    assert rejected(target, SOURCE, "position") == refused_before + 1
    entries = refusals(audit_entries(target, seq), "replication-position")
    assert len(entries) == 1 and entries[0]["principal"] == f"node:{SOURCE}"
    assert detail.format(through=p + through) in entries[0]["detail"], entries[0]["detail"]
    await assert_link_works(rogue_linked, f"after-{name}")


async def test_a_batch_may_skip_filtered_entries_within_the_gap(rogue_linked: LocalCluster) -> None:
    """A source skips what the target may not hold: through_lsn past the last mutation is fine
    within replication_position_gap_max."""
    target = rogue_linked.nodes["eu-central-1"]
    refused_before = rejected(target, SOURCE, "position")
    async with RogueStream(rogue_linked, target, SOURCE) as rogue:
        p = rogue.position
        ack = await rogue.send([mutation(SOURCE, p + 3, "skipped-ahead")], p + 500)
        assert (ack.applied_through_lsn, ack.refused_count) == (p + 500, 0)
        ack = await rogue.send([], p + 10_500)
        assert ack.applied_through_lsn == p + 10_500
    assert rejected(target, SOURCE, "position") == refused_before


async def test_a_hello_with_an_invalid_source_id_is_refused(rogue_linked: LocalCluster) -> None:
    """Regression: behind mutual TLS, the hello's source id was compared with the peer's before it
    was validated, so an authenticated peer's malformed id went into the log and the audit trail
    as a wrong-peer refusal (and never reached the check that names it invalid)."""
    target = rogue_linked.nodes["eu-central-1"]
    seq = await audit_mark(target)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with RogueStream(rogue_linked, target, "X" * 2000, sender=SOURCE):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid node id" in (info.value.details() or "")
    assert not [e for e in audit_entries(target, seq) if "XXXX" in e["detail"]]
