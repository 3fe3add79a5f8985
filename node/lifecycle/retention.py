"""Retention: records past their namespace's retention period are deleted with tombstones that
replicate like any delete, unless a legal hold covers them.

A record's age is counted from its newest live version (the HLC physical time of the write).
The clock is injected, so tests can sweep "years later" without waiting.

One sweep deletes at most `expire_max` records. A node whose clock jumped ahead sees every
short-lived record as expired, and its deletes are tombstones that win; the cap bounds what one
such sweep destroys, and a capped sweep is counted and alerted on (DomicileRetentionCapped). An
honest backlog larger than the cap is finished by the following sweeps.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from domicile.audit import TEXT_CHARS_MAX
from domicile.causality import CausalContext, KeyState
from domicile.cluster import ClusterSpec
from domicile.errors import FailedPrecondition
from domicile.hlc import physical_ms, wall_ms
from domicile.subjects import LegalHold, hold_covering
from node.compliance.enforcer import AuditSink
from node.engine.base import LocalWrite, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.offload import Offload

log = logging.getLogger("domicile.retention")

PAGE_KEYS = 500
EXPIRE_ACTION = "expire"


@dataclass
class SweepReport:
    now_ms: int
    expired: collections.Counter[str] = field(default_factory=collections.Counter)
    held: collections.Counter[str] = field(default_factory=collections.Counter)
    # Judged expired, but changed or held by the time its tombstone was to be written.
    spared: collections.Counter[str] = field(default_factory=collections.Counter)
    checked: int = 0
    capped: bool = False  # stopped at expire_max deletions


class RetentionSweeper:
    def __init__(
        self,
        *,
        node_id: str,
        engine: StorageEngine,
        committer: GroupCommitter,
        audit: AuditSink,
        on_committed: Callable[[], None] = lambda: None,
        on_expired: Callable[[str, int], None] = lambda namespace, n: None,
        now_ms: Callable[[], int] = wall_ms,
        offload: Offload | None = None,
        expire_max: int = 10_000,
        on_capped: Callable[[], None] = lambda: None,
    ) -> None:
        self.node_id = node_id
        self.engine = engine
        self.committer = committer
        self.audit = audit
        self.on_committed = on_committed
        self.on_expired = on_expired
        self.now_ms = now_ms
        self.offload = offload or Offload()
        self.expire_max = expire_max
        self.on_capped = on_capped
        self._lock = asyncio.Lock()

    async def sweep(
        self, cluster: ClusterSpec, holds: Callable[[], tuple[LegalHold, ...]], now_ms: int | None = None
    ) -> SweepReport:
        """One pass over every namespace with a retention period; one at a time. `holds` gives
        the holds in force at each moment (a hold placed during a long sweep counts)."""
        async with self._lock:
            now = self.now_ms() if now_ms is None else now_ms
            report = SweepReport(now)
            for spec in cluster.namespaces:
                if report.capped:
                    break
                retention = cluster.retention_class(spec.retention_class)
                if retention is None or retention.period_s == 0:
                    continue
                cutoff_ms = now - retention.period_s * 1000
                start_after = ""
                while True:
                    rows = await self.offload.run(self.engine.scan, spec.name, "", start_after, PAGE_KEYS)
                    for key, state in rows:
                        if sum(report.expired.values()) >= self.expire_max:
                            report.capped = True
                            break
                        report.checked += 1
                        live = state.live()
                        if not live:
                            continue
                        newest = max(live, key=lambda v: v.hlc)
                        if physical_ms(newest.hlc) > cutoff_ms:
                            continue
                        # The tombstone supersedes every live version: a hold on any of their
                        # subjects (siblings may be about different people) keeps the key.
                        in_force = holds()
                        if any(hold_covering(in_force, spec.name, key, v.subject_id) for v in live):
                            report.held[spec.name] += 1
                            continue
                        # Audited first (a deletion the trail cannot record does not happen),
                        # and superseding only what was seen, on the writer thread only if the
                        # key is still as seen and no hold covers it there: a write that lands
                        # meanwhile stays (in an lww namespace a later tombstone would win over
                        # it), and so does a record a hold placed meanwhile keeps.
                        await self.audit.record(
                            principal=f"node:{self.node_id}", action=EXPIRE_ACTION, namespace=spec.name,
                            key=key, subject_id=newest.subject_id, decision="expire",
                            rule=f"retention.{retention.name}", detail=f"period={retention.period_s}s",
                        )  # fmt: skip
                        expiry = replace(
                            LocalWrite.deleting(spec.name, key, newest, state.context),
                            precondition=_still_expirable(state.context, holds, spec.name, key),
                        )
                        try:
                            await self.committer.submit(expiry)
                        except FailedPrecondition as changed:
                            # The trail says the expiry was decided; it says too that it was not
                            # carried out, and why.
                            log.info("retention spared %s/%s: %s", spec.name, key, changed.message)
                            await self.audit.record(
                                principal=f"node:{self.node_id}", action=EXPIRE_ACTION, namespace=spec.name,
                                key=key, subject_id=newest.subject_id, decision="keep",
                                rule=f"retention.{retention.name}.spared",
                                detail=changed.message[:TEXT_CHARS_MAX],
                            )  # fmt: skip
                            report.spared[spec.name] += 1
                            continue
                        report.expired[spec.name] += 1
                    if len(rows) < PAGE_KEYS or report.capped:
                        break
                    start_after = rows[-1][0]
                    await asyncio.sleep(0)  # let requests through between pages
                if report.expired[spec.name]:
                    self.on_expired(spec.name, report.expired[spec.name])
            if report.capped:
                self.on_capped()
                log.warning(
                    "retention sweep stopped at its cap of %d deletions (expired %s): a backlog, or "
                    "this node's clock is ahead; check the clock before the next sweep",
                    self.expire_max,
                    dict(report.expired),
                )
            if report.expired:
                self.on_committed()
                log.info(
                    "retention sweep expired %s (held back: %s)", dict(report.expired), dict(report.held)
                )
            return report


def _still_expirable(
    seen: CausalContext, holds: Callable[[], tuple[LegalHold, ...]], namespace: str, key: str
) -> Callable[[KeyState | None], str]:
    """The expiry's check on the writer thread: the key is as the sweep saw it (no write since,
    whose version a later tombstone would hide in an lww namespace) and no hold covers a live
    version of it now."""

    def check(state: KeyState | None) -> str:
        if state is None or state.context != seen:
            return "written since the retention sweep judged it expired"
        in_force = holds()
        if any(hold_covering(in_force, namespace, key, v.subject_id) for v in state.live()):
            return "a legal hold placed since the retention sweep judged it expired keeps it"
        return ""

    return check
