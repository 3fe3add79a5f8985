"""The receiving end of replication: re-check the policy (defence in depth), merge
idempotently, persist the source position in the same transaction, measure lag."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from domicile import errors
from domicile.causality import Mutation
from domicile.cluster import ClusterSpec
from domicile.hlc import HybridClock, physical_ms, wall_ms
from domicile.policy import Action, RecordFacts
from domicile.subjects import LegalHold
from node.compliance.enforcer import Audit, Enforcer
from node.crypto.sealing import Sealer
from node.engine.base import ApplyOutcome, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.metrics import NodeMetrics
from node.offload import Offload
from node.topology_view import TopologyView

log = logging.getLogger("domicile.replication.inbound")


class ErasedSubjects(Protocol):
    """What the receiver needs of node.lifecycle.erasure.Eraser (injected: replication and
    lifecycle do not import each other)."""

    def blocks(
        self, cluster: ClusterSpec, holds: tuple[LegalHold, ...], namespace: str, key: str, subject_id: str
    ) -> str: ...


@dataclass
class InboundStats:
    source_node_id: str
    position: int = 0
    applied_total: int = 0
    refused_total: int = 0
    connected: bool = False


@dataclass(frozen=True)
class BatchResult:
    through_lsn: int
    refused: int
    duplicates: int


class Receiver:
    def __init__(
        self,
        *,
        node_id: str,
        region: str,
        engine: StorageEngine,
        committer: GroupCommitter,
        view: TopologyView,
        enforcer: Enforcer,
        sealer: Sealer,
        eraser: ErasedSubjects,
        clock: HybridClock,
        metrics: NodeMetrics,
        now_ms: Callable[[], int] = wall_ms,
        offload: Offload | None = None,
    ) -> None:
        self.node_id = node_id
        self.region = region
        self.engine = engine
        self.committer = committer
        self.view = view
        self.enforcer = enforcer
        self.sealer = sealer
        self.eraser = eraser
        self.clock = clock
        self.metrics = metrics
        self.now_ms = now_ms
        self.offload = offload or Offload()
        self.stats: dict[str, InboundStats] = {}

    async def open(self, source_node_id: str) -> int:
        """Starts a stream from a source; returns the position to resume after."""
        if source_node_id == self.node_id:
            raise errors.InvalidArgument(f"node {self.node_id} cannot replicate to itself")
        stats = self.stats.setdefault(source_node_id, InboundStats(source_node_id))
        stats.connected = True
        stats.position = await self.offload.run(self.engine.inbound_position, source_node_id)
        return stats.position

    def close(self, source_node_id: str) -> None:
        stats = self.stats.get(source_node_id)
        if stats is not None:
            stats.connected = False

    def _admit(self, source_node_id: str, m: Mutation, entries: list[asyncio.Future[int]]) -> bool:
        if m.origin_node_id != source_node_id:
            raise errors.InvalidArgument(
                f"mutation at lsn {m.lsn} names origin {m.origin_node_id!r}; "
                "a source sends only its own writes"
            )
        facts = RecordFacts(
            m.namespace, m.version.classification, m.version.subject_id, m.version.subject_jurisdiction
        )
        principal = f"node:{source_node_id}"
        detail = f"from={source_node_id} lsn={m.lsn}"
        if self.view.topology.cluster.find_namespace(m.namespace) is None:
            log.warning("refused mutation from %s for unknown namespace %r", source_node_id, m.namespace)
            entries.append(
                self.enforcer.refusal(
                    facts,
                    action=Action.REPLICATE,
                    audit_action=Audit.REPLICATE_RECEIVE,
                    principal=principal,
                    key=m.key,
                    rule="namespace-unknown",
                    detail=detail,
                )
            )
            return False
        # An erased subject is refused before any decision is recorded for it.
        if not m.version.tombstone:
            topology = self.view.topology
            erased_by = self.eraser.blocks(
                topology.cluster, topology.holds, m.namespace, m.key, m.version.subject_id
            )
            if erased_by:
                # Written where the erasure had not arrived yet: it must not bring the subject back.
                entries.append(
                    self.enforcer.refusal(
                        facts,
                        action=Action.REPLICATE,
                        audit_action=Audit.REPLICATE_RECEIVE,
                        principal=principal,
                        key=m.key,
                        rule="subject-erased",
                        detail=f"{detail} request={erased_by}",
                    )
                )
                log.info(
                    "refused %s/%s from %s: subject erased by %s",
                    m.namespace,
                    m.key,
                    source_node_id,
                    erased_by,
                )
                return False
        decision, entry = self.enforcer.decide(
            facts,
            Action.REPLICATE,
            audit_action=Audit.REPLICATE_RECEIVE,
            principal=principal,
            key=m.key,
            detail=detail,
        )
        if entry is not None:
            entries.append(entry)
        if not decision.allowed:
            # A correct source never sends this: it is a misconfigured or rogue node.
            log.warning(
                "refused replicated record %s/%s from %s: %s (rule %s)",
                m.namespace,
                m.key,
                source_node_id,
                decision.reason,
                decision.rule,
            )
            return False
        # Checked here, before sealing replaces the checksum with the stored value's (the engine
        # could no longer tell a value damaged on the way).
        if not m.version.tombstone and not m.version.checksum_ok():
            raise errors.DataCorruption(
                f"mutation {m.namespace}/{m.key} at lsn {m.lsn} from {source_node_id} failed its sha256 "
                "checksum; the batch was not applied"
            )
        return True

    async def apply_batch(
        self, source_node_id: str, mutations: Sequence[Mutation], through_lsn: int
    ) -> BatchResult:
        stats = self.stats.setdefault(source_node_id, InboundStats(source_node_id))
        if through_lsn < stats.position:
            # A batch from before our position (a duplicate after reconnect): nothing to do.
            return BatchResult(stats.position, 0, len(mutations))
        for m in mutations:
            if m.lsn > through_lsn:
                raise errors.InvalidArgument(
                    f"mutation lsn {m.lsn} is past the batch's through_lsn {through_lsn}"
                )
        entries: list[asyncio.Future[int]] = []
        cluster = self.view.topology.cluster
        # Stored encrypted under this region's key for the subject; data keys never travel. The
        # whole batch is sealed in one hop, after every mutation was admitted.
        admitted = await self.sealer.seal_mutations(
            cluster, [m for m in mutations if self._admit(source_node_id, m, entries)]
        )
        refused = len(mutations) - len(admitted)
        # The batch's audit entries are durable before it is applied (and acknowledged).
        if entries:
            await asyncio.gather(*entries)

        def work(engine: StorageEngine) -> ApplyOutcome:
            return engine.apply_remote(source_node_id, admitted, through_lsn)

        outcome = await self.committer.run(work)
        if admitted:
            self.clock.observe(max(m.version.hlc for m in admitted))
        now = self.now_ms()
        lags_ms = [max(0, now - physical_ms(m.version.hlc)) for m in outcome.applied]
        labels = (source_node_id, self.node_id)
        histogram = self.metrics.replication_lag.labels(*labels)
        for lag in lags_ms:
            histogram.observe(lag / 1000.0)
        self.metrics.lag_window(*labels).add_many(float(x) for x in lags_ms)
        self.metrics.replication_applied.labels(*labels).inc(len(outcome.applied))
        self.metrics.replication_duplicates.labels(*labels).inc(outcome.duplicates)
        if refused:
            self.metrics.replication_refused.labels(*labels).inc(refused)
        if outcome.conflicts:
            self.metrics.conflicts.labels("*", "replicated").inc(outcome.conflicts)
        stats.position = outcome.position
        stats.applied_total += len(outcome.applied)
        stats.refused_total += refused
        return BatchResult(outcome.position, refused, outcome.duplicates)
