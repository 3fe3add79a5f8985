"""Bootstrap of a replica that fell behind this node's truncated change log.

Truncation (node.replication.truncation) deletes change-log entries every linked target has
acknowledged. A target whose position is behind where the log now starts (a new link, a store
rebuilt or restored, a node removed and added back) can no longer be streamed to from its
position. The source then sends its key states instead:

- **The source** (SnapshotSource) reads one consistent snapshot of its store together with its
  change-log position L (the engine's snapshot_at: the states hold exactly the effects of its log
  up to L), keeps the link's namespaces, decides and audits every version as a send to the
  target's region (as a stream's source does), opens the values (the target seals them under its
  own keys) and sends the states namespace by namespace in key order, in parts acknowledged one
  at a time. Then it streams batches after L.
- **The target** (SnapshotTarget) merges each part through the receiver's repair path (its checks,
  the erasure block, the policy again, audited; each state as its mutations, entropy's
  state_mutations, through the same apply as a stream, so a part applied twice changes
  nothing), then drops what the source purged: a version it holds that no context of the source's
  covers, whose HLC is older than the source's purge point, in a range the part covers, is one
  the source deleted and whose tombstone it has since purged (tombstone_gc); merging would bring
  it back. The last part moves the target's position to L in the same transaction as nothing
  else: every state up to L is applied by then, so streaming after L loses nothing.

A bootstrap cut short is begun again on the next connection: the position has not moved and
applying the parts again is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import grpc

from domicile import errors
from domicile.causality import CausalContext, Dot, KeyState, Mutation
from domicile.hlc import physical_ms
from domicile.model import Limits
from domicile.policy import Action, RecordFacts
from domicile.subjects import hold_covering
from domicile.topology import NodeInfo
from domicile.v1 import replication_pb2 as rpb
from domicile.wire.records import context_from_pb, context_to_pb, mutation_to_pb
from node.compliance.enforcer import Enforcer
from node.crypto.sealing import Sealer
from node.engine.base import StorageEngine
from node.engine.core import decode_state
from node.engine.group_commit import GroupCommitter
from node.metrics import NodeMetrics
from node.offload import Offload
from node.replication.entropy import decide_send, state_mutations
from node.replication.inbound import Receiver
from node.replication.outbound import _within as within
from node.topology_view import TopologyView

log = logging.getLogger("domicile.replication.bootstrap")

PART_KEYS_MAX = 500
# A part stops adding keys past this many value bytes (under the 4 MiB message limit).
PART_BYTES_MAX = 3 * 1024 * 1024
# Keys of the target's own store read per page when it looks for what the source purged.
_RANGE_PAGE = 1_000
# The audit entry of a version a bootstrap drops because its source purged it (deleted it, then
# purged the tombstone): a deletion here like any other, so on the trail.
PRUNE_ACTION = "bootstrap_prune"
PRUNE_RULE = "bootstrap.source-purged"


@dataclass
class _RawPart:
    namespace: str
    after_key: str
    through_key: str = ""
    to_end: bool = False
    states: list[tuple[str, KeyState]] = field(default_factory=list)


class _SnapshotCursor:
    """Walks one consistent snapshot in parts of the link's namespaces. Every method blocks
    (store reads): called through the offload pool, one call at a time."""

    def __init__(self, engine: StorageEngine, namespaces: frozenset[str]) -> None:
        self._cm: AbstractContextManager[tuple[int, Iterator[tuple[str, str, bytes]]]] = engine.snapshot_at()
        self._rows: Iterator[tuple[str, str, bytes]] = iter(())
        self._namespaces = sorted(namespaces)
        self._next_ns = 0
        self._peeked: tuple[str, str, bytes] | None = None
        self._after = ""

    def open(self) -> int:
        position, self._rows = self._cm.__enter__()
        return position

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def _peek(self) -> tuple[str, str, bytes] | None:
        if self._peeked is None:
            self._peeked = next(self._rows, None)
        return self._peeked

    def next_part(self) -> _RawPart | None:
        if self._next_ns >= len(self._namespaces):
            return None
        namespace = self._namespaces[self._next_ns]
        part = _RawPart(namespace, self._after)
        size = 0
        while True:
            row = self._peek()
            # Rows of namespaces the link does not carry (sorted before this one) are skipped.
            while row is not None and row[0] < namespace:
                self._peeked = None
                row = self._peek()
            if row is None or row[0] != namespace:
                part.to_end = True
                self._next_ns += 1
                self._after = ""
                return part
            if len(part.states) >= PART_KEYS_MAX or (part.states and size >= PART_BYTES_MAX):
                part.through_key = part.states[-1][0]
                self._after = part.through_key
                return part
            self._peeked = None
            state = decode_state(row[0], row[1], row[2])
            part.states.append((row[1], state))
            size += sum(len(v.value) for v in state.versions)


class SnapshotSource:
    """The source's end: the parts of a bootstrap for one target."""

    def __init__(
        self,
        *,
        node_id: str,
        engine: StorageEngine,
        enforcer: Enforcer,
        sealer: Sealer,
        offload: Offload,
        metrics: NodeMetrics,
    ) -> None:
        self.node_id = node_id
        self.engine = engine
        self.enforcer = enforcer
        self.sealer = sealer
        self.offload = offload
        self.metrics = metrics

    async def parts(
        self, target: NodeInfo, namespaces: frozenset[str]
    ) -> AsyncIterator[rpb.ReplicationSnapshot]:
        """The bootstrap's parts, in order; the last one carries snapshot_lsn to the target."""
        cursor = _SnapshotCursor(self.engine, namespaces)
        position = await self.offload.run(cursor.open)
        purged = await self.offload.run(self.engine.purged_before)
        try:
            raw = await self.offload.run(cursor.next_part)
            while raw is not None:
                following = await self.offload.run(cursor.next_part)
                part = await self._encode(raw, target, position, purged)
                part.last = following is None
                yield part
                raw = following
        finally:
            await self.offload.run(cursor.close)

    async def _encode(
        self, raw: _RawPart, target: NodeInfo, position: int, purged: int
    ) -> rpb.ReplicationSnapshot:
        part = rpb.ReplicationSnapshot(
            namespace=raw.namespace,
            after_key=raw.after_key,
            through_key=raw.through_key,
            to_end=raw.to_end,
            snapshot_lsn=position,
            purged_before_hlc=purged,
        )
        entries: list[asyncio.Future[int]] = []
        wanted: list[Mutation] = []
        for key, state in raw.states:
            context_to_pb(state.context, part.contexts.add(key=key).context)
            for m in state_mutations(raw.namespace, key, state):
                if decide_send(self.enforcer, self.node_id, target, key, m, "bootstrap", entries):
                    wanted.append(m)
        opened = await self.offload.run(self._open, wanted)
        for m in opened:
            mutation_to_pb(m, part.mutations.add())
        # The trail says what left before it leaves.
        if entries:
            await asyncio.gather(*entries)
        return part

    def _open(self, mutations: list[Mutation]) -> list[Mutation]:
        out = []
        for m in mutations:
            version = self.sealer.open_version(m.namespace, m.key, m.version)
            if version is not None:  # None: erased (its key was destroyed)
                out.append(Mutation(m.namespace, m.key, m.context, version, 0, m.origin_node_id))
        return out


class SnapshotTarget:
    """The target's end: applies a bootstrap's parts from one source."""

    def __init__(
        self,
        *,
        receiver: Receiver,
        engine: StorageEngine,
        committer: GroupCommitter,
        view: TopologyView,
        metrics: NodeMetrics,
        offload: Offload,
        tombstone_horizon_ms: int,
        now_ms: Callable[[], int],
        limits: Limits | None = None,
    ) -> None:
        self.receiver = receiver
        self.engine = engine
        self.committer = committer
        self.view = view
        self.metrics = metrics
        self.offload = offload
        self.tombstone_horizon_ms = tombstone_horizon_ms
        self.now_ms = now_ms
        self.limits = limits or Limits()

    def _check(self, source: str, source_node_id: str, part: rpb.ReplicationSnapshot) -> None:
        """A part names a namespace of the link, and carries only keys of its range and a purge
        point no later than this node's own horizon allows (a source claiming a later one could
        make this node drop recent writes)."""
        topology = self.view.topology
        link = next(
            (
                li
                for li in topology.links
                if li.source_node_id == source_node_id and li.target_node_id == self.receiver.node_id
            ),
            None,
        )
        if link is None or part.namespace not in link.namespaces:
            raise errors.InvalidArgument(
                f"bootstrap part from {source} for namespace {part.namespace!r}, which the link from it "
                f"does not carry ({', '.join(link.namespaces) if link else 'no link'})"
            )
        for m in part.mutations:
            if m.namespace != part.namespace or not self._in_range(part, m.key):
                raise errors.InvalidArgument(
                    f"bootstrap part from {source} carries {m.namespace}/{m.key}, outside the part's range "
                    f"of {part.namespace!r} after {part.after_key!r}"
                )
        for c in part.contexts:
            if not self._in_range(part, c.key):
                raise errors.InvalidArgument(
                    f"bootstrap part from {source} names key {c.key!r} outside its range"
                )
        latest = self.now_ms() - self.tombstone_horizon_ms + self.receiver.max_clock_drift_ms
        claimed = physical_ms(part.purged_before_hlc)
        if part.purged_before_hlc and claimed > latest:
            raise errors.InvalidArgument(
                f"bootstrap part from {source} says tombstones before {claimed} ms "
                f"were purged; with this node's tombstone horizon of {self.tombstone_horizon_ms} ms nothing "
                f"after {latest} ms can have been"
            )

    @staticmethod
    def _in_range(part: rpb.ReplicationSnapshot, key: str) -> bool:
        return key > part.after_key and (part.to_end or key <= part.through_key)

    async def apply(self, source: str, source_node: NodeInfo, part: rpb.ReplicationSnapshot) -> int:
        """Applies one part from `source` (the writer id of the stream); returns the position to
        acknowledge (the source's snapshot_lsn after the last part)."""
        self._check(source, source_node.node_id, part)
        if part.mutations:
            await self.receiver.apply_repair(source, part.mutations, via="bootstrap")
        contexts = {c.key: context_from_pb(c.context, self.limits) for c in part.contexts}
        labels = (source_node.node_id, self.receiver.node_id)

        async def prune_and_tell() -> None:
            # Shielded with its commit: a part cut short (its source gave up waiting for the
            # ack) is sent again, and then prunes nothing, so the trees hear of it now or never.
            pruned = await self._prune(source_node, part, contexts)
            if pruned:
                self.metrics.bootstrap_pruned.labels(*labels).inc(len(pruned))
                if self.receiver.on_applied is not None:
                    self.receiver.on_applied([(part.namespace, key) for key in pruned])

        await asyncio.shield(prune_and_tell())
        self.metrics.bootstrap_keys.labels(*labels).inc(len(part.contexts))
        if not part.last:
            return await self.offload.run(self.engine.inbound_position, source)
        lsn = part.snapshot_lsn
        outcome = await self.committer.run(lambda engine: engine.apply_remote(source, [], lsn))
        self.receiver.stats_for(source).position = outcome.position
        self.metrics.bootstraps.labels(source_node.node_id, self.receiver.node_id, "target").inc()
        log.info("bootstrap from %s done: position %d", source, outcome.position)
        return outcome.position

    async def _prune(
        self, source_node: NodeInfo, part: rpb.ReplicationSnapshot, contexts: dict[str, CausalContext]
    ) -> list[str]:
        """Drops the versions of the part's range that the source purged (see the module doc)."""
        if not part.purged_before_hlc:
            return []
        drops = await self.offload.run(self._purged_here, source_node, part, contexts)
        if not drops:
            return []
        namespace = part.namespace
        # Audited first, like every deletion (a deletion the trail cannot record does not happen):
        # one entry per key, as the source's purge deleted nothing it recorded here.
        audit = self.receiver.enforcer.audit
        source = source_node.node_id
        await asyncio.gather(
            *(
                audit.record(
                    principal=f"node:{source}",
                    action=PRUNE_ACTION,
                    namespace=namespace,
                    key=key,
                    subject_id=subject,
                    decision="delete",
                    rule=PRUNE_RULE,
                    detail=f"from={source} versions={len(dots)} purged_before_hlc={part.purged_before_hlc}",
                )
                for key, (dots, subject) in drops.items()
            )
        )
        # The pruned versions can be live ones: the read cache hears of their keys like of any
        # other change, before this part is acknowledged.
        dropped = {key: dots for key, (dots, _subject) in drops.items()}
        await self.committer.run(
            lambda engine: engine.prune_versions(namespace, dropped), keys=[(namespace, key) for key in drops]
        )
        return sorted(drops)

    def _purged_here(
        self, source_node: NodeInfo, part: rpb.ReplicationSnapshot, contexts: dict[str, CausalContext]
    ) -> dict[str, tuple[set[Dot], str]]:
        """Versions held here in the part's range that the source deleted and purged, by key,
        with a subject they are about (for the audit entry; "" for none). Blocks."""
        policy = self.view.policy
        holds = self.view.topology.holds
        empty = CausalContext.empty()
        drops: dict[str, tuple[set[Dot], str]] = {}
        after = part.after_key
        while True:
            page = self.engine.states_after(part.namespace, after, _RANGE_PAGE)
            for key, state in page:
                if not self._in_range(part, key):
                    return drops
                seen = contexts.get(key, empty)
                for v in state.versions:
                    if seen.covers(v.dot) or v.hlc >= part.purged_before_hlc:
                        continue
                    facts = RecordFacts(
                        part.namespace, v.classification, v.subject_id, v.subject_jurisdiction
                    )
                    # Only what the source could have held (it never saw the rest), and never
                    # what a legal hold keeps.
                    if not policy.decide(facts, source_node.region, Action.REPLICATE).allowed:
                        continue
                    if hold_covering(holds, part.namespace, key, v.subject_id) is not None:
                        continue
                    dots, subject = drops.setdefault(key, (set(), v.subject_id))
                    dots.add(v.dot)
                    if not subject and v.subject_id:
                        drops[key] = (dots, v.subject_id)
            if len(page) < _RANGE_PAGE:
                return drops
            after = page[-1][0]


async def bootstrap_if_behind(
    source: SnapshotSource,
    call: grpc.aio.StreamStreamCall,
    resume_after: int,
    target: NodeInfo,
    namespaces: frozenset[str],
    deadline_s: float,
) -> int:
    """Bootstraps the target when the log starts after its position; returns the position to
    stream after (resume_after when no bootstrap was needed)."""
    start = await source.offload.run(source.engine.log_start)
    if resume_after >= start.lsn:
        return resume_after
    log.info(
        "link %s -> %s: target at %d, the log starts after %d; bootstrapping from a snapshot",
        source.node_id, target.node_id, resume_after, start.lsn,
    )  # fmt: skip
    position = resume_after
    async for part in source.parts(target, namespaces):
        await within(call, call.write(rpb.ReplicateRequest(snapshot=part)), deadline_s)
        answer = await within(call, call.read(), deadline_s)
        if answer is grpc.aio.EOF or answer.WhichOneof("kind") != "ack":
            raise ConnectionError("target did not acknowledge a bootstrap part")
        position = answer.ack.applied_through_lsn
        if part.last and position < part.snapshot_lsn:
            raise ConnectionError(
                f"target acknowledged {position} after the bootstrap's last part, not {part.snapshot_lsn}"
            )
    source.metrics.bootstraps.labels(source.node_id, target.node_id, "source").inc()
    return position
