"""Change-log truncation: this node's log keeps only what some replica may still need.

An entry may go once every link of the topology in force has acknowledged it (each target
applied it durably) and, when the node backs up to a bucket, once a shipped segment holds it.
Every `changelog_truncate_interval_s` a pass deletes entries up to that point, in transactions of
at most TRUNCATE_STEP entries and at most PASS_ENTRIES_MAX per pass (bounded work; the group
committer's writes interleave), then runs a tombstone collection pass (tombstone_gc), whose rule
depends on where the log now starts.

A target whose position is behind the start of the log (a new link, a store rebuilt or restored,
a node removed and added back) is bootstrapped from a snapshot (node.replication.bootstrap). A
target that is down holds truncation back at its acknowledged position until it returns or is
removed from the topology.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from domicile.errors import DomicileError
from node.engine.base import LogStart, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.metrics import NodeMetrics
from node.offload import Offload
from node.replication.tombstone_gc import TombstoneCollector

log = logging.getLogger("domicile.replication.truncation")

TRUNCATE_STEP = 5_000
PASS_ENTRIES_MAX = 100_000


def truncation_point(last_lsn: int, link_acks: Mapping[str, int] | None, backup_shipped: int | None) -> int:
    """How far the log may be truncated: the least position every link acknowledged (None: some
    link's position is not known yet, nothing may go) and the backup shipped (None: no backup)."""
    if link_acks is None:
        return 0
    point = min([last_lsn, *link_acks.values()])
    if backup_shipped is not None:
        point = min(point, backup_shipped)
    return max(point, 0)


class Truncator:
    def __init__(
        self,
        *,
        engine: StorageEngine,
        committer: GroupCommitter,
        metrics: NodeMetrics,
        offload: Offload,
        link_acks: Callable[[], Mapping[str, int] | None],
        # What the backup shipped; None (or a callable answering None): no backup runs.
        backup_shipped: Callable[[], int | None] | None = None,
        collector: TombstoneCollector | None = None,
        interval_s: float = 5.0,
    ) -> None:
        self.engine = engine
        self.committer = committer
        self.metrics = metrics
        self.offload = offload
        self.link_acks = link_acks
        self.backup_shipped = backup_shipped
        self.collector = collector
        self.interval_s = interval_s

    async def pass_once(self) -> LogStart:
        """Truncates what it may (bounded), then collects tombstones; returns the log's start."""
        last = await self.offload.run(self.engine.last_lsn)
        point = truncation_point(
            last, self.link_acks(), self.backup_shipped() if self.backup_shipped is not None else None
        )
        start = await self.offload.run(self.engine.log_start)
        budget = PASS_ENTRIES_MAX
        while start.lsn < point and budget > 0:
            step = min(TRUNCATE_STEP, budget)
            before = start.lsn

            def truncate(engine: StorageEngine, limit: int = step) -> LogStart:
                return engine.truncate_log(point, limit)

            start = await self.committer.run(truncate)
            if start.lsn <= before:
                break
            budget -= start.lsn - before
            self.metrics.changelog_truncated.inc(start.lsn - before)
        self.metrics.changelog_truncated_lsn.set(start.lsn)
        self.metrics.changelog_rows.set(max(0, last - start.lsn))
        if self.collector is not None:
            await self.collector.pass_once(start)
        return start

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.pass_once()
            except DomicileError as exc:
                # The store unreachable: the next pass tries again; nothing is lost meanwhile.
                log.info("change-log truncation pass failed: %s", exc.message)
            except Exception:
                # A bug must not end the passes for good: logged with its trace.
                log.exception("change-log truncation pass failed unexpectedly")
