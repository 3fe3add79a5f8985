"""Tombstone garbage collection: key states left with nothing but tombstones, older than the
horizon, are purged once every replica in scope holds the delete.

A tombstone must outlive every copy of what it deletes, or merging an old copy back would bring
the record back. So a key state is purged only when:

- it has no live version, and its newest tombstone is older than the horizon
  (`tombstone_gc_horizon_s`, 7 days by default), by the HLC;
- no legal hold covers it;
- each of its tombstones that this node wrote is at or before where its change log is truncated:
  truncation (node.replication.truncation) passes only entries that every link acknowledged, so
  every replica in scope has applied the delete. Tombstones written elsewhere are purged on their
  horizon alone (see the README's limits): their writer's log keeps the delete for any replica
  that has not acknowledged it.

A replica that fell behind the truncation point cannot merge a purged record back: its source
bootstraps it (node.replication.bootstrap), sending the point before which tombstones may have
been purged, and the replica drops the versions its source no longer has a trace of.

Each pass reads at most PASS_KEYS_MAX dead keys, from where the last pass stopped (wrapping at
the end), and rechecks each one inside the purge's write transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from domicile.causality import KeyState
from domicile.hlc import pack, wall_ms
from domicile.subjects import LegalHold, hold_covering
from node.engine.base import LogStart, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.metrics import NodeMetrics
from node.offload import Offload
from node.topology_view import TopologyView

log = logging.getLogger("domicile.replication.tombstone_gc")

PASS_KEYS_MAX = 1_000
DEFAULT_HORIZON_S = 7 * 86_400


def purgeable(
    state: KeyState, *, namespace: str, key: str, writer_id: str, log_start: LogStart, cutoff_hlc: int,
    holds: tuple[LegalHold, ...],
) -> bool:  # fmt: skip
    """Whether a key state with no live version may be purged now (the module doc's rule)."""
    if not state.versions or state.has_live():
        return False
    if max(v.hlc for v in state.versions) >= cutoff_hlc:
        return False
    for v in state.versions:
        if v.dot.node_id == writer_id and v.hlc > log_start.hlc:
            return False  # a replica may not have applied this delete yet
        if hold_covering(holds, namespace, key, v.subject_id) is not None:
            return False
    return True


class TombstoneCollector:
    def __init__(
        self,
        *,
        engine: StorageEngine,
        committer: GroupCommitter,
        view: TopologyView,
        metrics: NodeMetrics,
        offload: Offload,
        horizon_s: float = DEFAULT_HORIZON_S,
        now_ms: Callable[[], int] = wall_ms,
        on_purged: Callable[[Iterable[tuple[str, str]]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.committer = committer
        self.view = view
        self.metrics = metrics
        self.offload = offload
        self.horizon_ms = int(horizon_s * 1000)
        self.now_ms = now_ms
        # Told the purged keys (the anti-entropy digest trees mark them).
        self.on_purged = on_purged
        self._after: tuple[str, str] = ("", "")

    async def pass_once(self, log_start: LogStart) -> int:
        """One bounded pass; returns how many key states were purged."""
        cutoff_hlc = pack(self.now_ms() - self.horizon_ms, 0)
        dead = await self.offload.run(self.engine.dead_states, self._after, PASS_KEYS_MAX)
        self._after = (dead[-1][0], dead[-1][1]) if len(dead) == PASS_KEYS_MAX else ("", "")
        writer = self.engine.node_id
        by_namespace: dict[str, list[str]] = {}
        for namespace, key, state in dead:
            if purgeable(
                state, namespace=namespace, key=key, writer_id=writer, log_start=log_start,
                cutoff_hlc=cutoff_hlc, holds=self.view.topology.holds,
            ):  # fmt: skip
                by_namespace.setdefault(namespace, []).append(key)
        purged = 0
        for namespace, keys in by_namespace.items():

            def check(key: str, state: KeyState, ns: str = namespace) -> bool:
                # Read again in the transaction: a write may have landed since the scan.
                return purgeable(
                    state, namespace=ns, key=key, writer_id=writer, log_start=log_start,
                    cutoff_hlc=cutoff_hlc, holds=self.view.topology.holds,
                )  # fmt: skip

            def purge(engine: StorageEngine, ns: str = namespace, ks: list[str] = keys) -> int:
                return engine.purge_tombstones(ns, ks, check, cutoff_hlc)

            # The read cache hears of the keys (those rechecked and kept too: a needless miss),
            # or it would keep answering a purged tombstone, whose context names counters the
            # store no longer holds for the key, so a write with it would be refused.
            count = await self.committer.run(purge, keys=[(namespace, k) for k in keys])
            purged += count
            if count and self.on_purged is not None:
                self.on_purged((namespace, k) for k in keys)
        if purged:
            self.metrics.tombstones_purged.inc(purged)
            log.info("purged %d tombstoned keys older than %d s", purged, self.horizon_ms // 1000)
        return purged
