"""Change-log truncation: this node's log keeps only what some replica may still need.

An entry may go once every link of the topology in force has acknowledged it (each target
applied it durably) and, when the node backs up to a bucket, once a shipped segment holds it.
Every `changelog_truncate_interval_s` a pass deletes entries up to that point, in transactions of
at most TRUNCATE_STEP entries and at most PASS_ENTRIES_MAX per pass (bounded work; the group
committer's writes interleave), then runs a tombstone collection pass (tombstone_gc), whose rule
depends on where the log now starts.

A target whose position is behind the start of the log (a new link, a store rebuilt or restored,
a node removed and added back) is bootstrapped from a snapshot (node.replication.bootstrap). A
target that is down holds truncation back at its acknowledged position, but not for ever: once
it has acknowledged nothing new for `changelog_hold_max_s` (HoldLimit) while the log holds
entries it lacks and its link has no session, its link is left out of the truncation point, the
log is truncated past it, and the target is bootstrapped when it returns (the link's next
session finds its position behind the log's start). The link holds again as soon as its target
connects or acknowledges. The time a link's target has been away counts across restarts of this
node (STALLS_META), but only the time this node was running: its own downtime does not. While a
link is behind the log's start, this node's own tombstones are not purged (collection_start):
the bootstrap, not an anti-entropy round, must meet what that target still holds of the records
they deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

from domicile.errors import DomicileError
from node.engine.base import LogStart, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.metrics import NodeMetrics
from node.offload import Offload
from node.replication.tombstone_gc import TombstoneCollector

log = logging.getLogger("domicile.replication.truncation")

TRUNCATE_STEP = 5_000
PASS_ENTRIES_MAX = 100_000
# The stalls of links whose target is away (HoldLimit.away), kept in the engine's metadata so
# that a restart of this node does not start their time over.
STALLS_META = "changelog_link_stalls"
# While a target is away, how often at most the stored stalls' last-running time is refreshed
# (a tiny metadata write); a restart loses at most this much of the time counted, so the link
# holds a little longer, never less. A tenth of the hold limit when that is shorter.
RUNNING_REFRESH_S = 60.0


def truncation_point(last_lsn: int, link_acks: Mapping[str, int] | None, backup_shipped: int | None) -> int:
    """How far the log may be truncated: the least position every link acknowledged (None: some
    link's position is not known yet, nothing may go) and the backup shipped (None: no backup)."""
    if link_acks is None:
        return 0
    point = min([last_lsn, *link_acks.values()])
    if backup_shipped is not None:
        point = min(point, backup_shipped)
    return max(point, 0)


def collection_start(start: LogStart, link_acks: Mapping[str, int] | None) -> LogStart:
    """Where the log starts, as the tombstone collector may count it (tombstone_gc purges this
    node's own tombstones only at or before it, as every replica in scope has applied them).
    That holds while every link's acknowledged position is at or past the log's start. A link
    behind it (released by HoldLimit, or a new or restored target not bootstrapped yet) may
    still hold what those tombstones deleted, and an anti-entropy round with it before its
    bootstrap would merge that back into a node that purged the tombstone, for good: then no
    tombstone of this node's is purged (LogStart()), nor while a link's position is unknown."""
    if link_acks is None or any(acked < start.lsn for acked in link_acks.values()):
        return LogStart()
    return start


@dataclass
class _Stall:
    acked: int
    since: float
    # The same moment by the wall clock: what a restart resumes the count from.
    since_wall: float
    released: bool = False


# target -> (acknowledged position, wall-clock time its stall began)
Stalls = dict[str, tuple[int, float]]


@dataclass(frozen=True)
class Away:
    """What a restart resumes (HoldLimit.away): the stalls of the links whose target is away,
    and the last wall-clock time this node was seen running with them. A stall's time counts
    from its start up to `running`: the node's downtime after it does not count."""

    stalls: Stalls = field(default_factory=dict)
    running: float = 0.0


def stalls_to_bytes(away: Away) -> bytes:
    stalls = {t: [acked, since] for t, (acked, since) in away.stalls.items()}
    return json.dumps({"running": away.running, "stalls": stalls}, sort_keys=True).encode()


def stalls_from_bytes(raw: bytes | None) -> Away:
    """What stalls_to_bytes wrote; no stalls for nothing or anything else (the links then count
    their time from now: they hold truncation longer, never less)."""
    if raw is None:
        return Away()
    try:
        stored = json.loads(raw)
        stalls = {str(t): (int(acked), float(since)) for t, (acked, since) in stored["stalls"].items()}
        return Away(stalls, float(stored["running"]))
    except (ValueError, TypeError, AttributeError, KeyError):
        log.warning("the stored stalls of the change-log links cannot be read; their time counts from now")
        return Away()


class HoldLimit:
    """Which links may hold truncation back. A link whose target's acknowledged position has
    not moved for hold_max_s while the log has entries past it, and whose sender has had no
    session with the target all that time (the target is down, or unreachable), is released:
    left out of the truncation point until its target connects or acknowledges again. The time
    counts from the last pass that saw the position move or the link connected, by this
    process's monotonic clock; a restart resumes it with the time counted up to the last pass
    before the restart (resume(), with what away() gave before: a node that restarts, or
    crash-loops, would otherwise never let a down target go), and the time this node was down
    does not count (a peer that went away just before this node stopped has had no chance to
    reconnect). A connected link is never released: its target is there, and a position that
    stays still is its cadence's doing (a scheduled link waits days between windows) or a slow
    apply, not an absence. hold_max_s 0: no link is ever released."""

    def __init__(
        self,
        hold_max_s: float,
        metrics: NodeMetrics,
        node_id: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.hold_max_s = hold_max_s
        self.metrics = metrics
        self.node_id = node_id
        self.clock = clock
        self.wall = wall
        self._stalls: dict[str, _Stall] = {}
        self._connected: frozenset[str] = frozenset()
        # The wall-clock time of the last pass (or resume): this node was running then.
        self._running = wall()

    def away(self) -> Away:
        """The stalls of the links whose target had no session at the last holding(), and when
        that was: what a restart resumes. A connected link's count starts over at every pass
        anyway."""
        stalls = {t: (s.acked, s.since_wall) for t, s in self._stalls.items() if t not in self._connected}
        return Away(stalls, self._running)

    def resume(self, away: Away) -> None:
        """Takes up the stalls away() gave before a restart: a link still at that position with
        no session goes on counting from the time it had counted when this node was last seen
        running (by the wall clock, never below 0): the downtime between does not count."""
        now, wall = self.clock(), self.wall()
        self._running = wall
        for target, (acked, since_wall) in away.stalls.items():
            if target not in self._stalls:
                counted = max(0.0, away.running - since_wall)
                # As if it had begun `counted` ago: what the next away() stores, so that the next
                # restart leaves this downtime out too.
                self._stalls[target] = _Stall(acked, now - counted, wall - counted)

    @property
    def released(self) -> frozenset[str]:
        return frozenset(t for t, s in self._stalls.items() if s.released)

    def holding(
        self,
        link_acks: Mapping[str, int],
        last_lsn: int,
        connected: Collection[str] = (),
        opening: Collection[str] = (),
    ) -> dict[str, int]:
        """The links (target: acknowledged position) that still hold truncation back.
        `connected`: the targets whose link streams now; `opening`: those whose session is open
        but not streaming yet (their bootstrap is under way)."""
        now = self.clock()
        self._running = self.wall()
        self._connected = frozenset(connected)
        for gone in self._stalls.keys() - link_acks.keys():
            # Out of the topology: the link no longer exists, nor does its hold, nor its gauge.
            self._stalls.pop(gone)
            with contextlib.suppress(KeyError):
                self.metrics.changelog_link_released.remove(self.node_id, gone)
        kept: dict[str, int] = {}
        for target, acked in link_acks.items():
            stall = self._stalls.get(target)
            if acked >= last_lsn:
                # Caught up: it holds nothing back, and its silence means nothing.
                if stall is not None:
                    self._set_released(target, self._stalls.pop(target), False)
                kept[target] = acked
                continue
            if stall is None or stall.acked != acked or target in connected:
                # Behind, and first seen so (or it acknowledged something since, or its target
                # is connected): it holds, and its time starts again.
                if stall is not None:
                    self._set_released(target, stall, False)
                stall = self._stalls[target] = _Stall(acked, now, self.wall())
            if target in opening:
                # Its bootstrap is under way: it holds, or truncation would pass the snapshot it
                # is being given and it would have to start over. Its time goes on all the same,
                # so bootstraps that keep failing hold truncation only while each one runs.
                kept[target] = acked
                continue
            if stall.released or (self.hold_max_s > 0 and now - stall.since >= self.hold_max_s):
                if not stall.released:
                    log.warning(
                        "link %s -> %s: the target has acknowledged nothing past position %d for "
                        "%.0f s (changelog_hold_max_s); the change log is truncated without it, and "
                        "it is bootstrapped from a snapshot when it returns",
                        self.node_id, target, acked, now - stall.since,
                    )  # fmt: skip
                    self.metrics.changelog_hold_releases.labels(self.node_id, target).inc()
                self._set_released(target, stall, True)
                continue
            kept[target] = acked
        return kept

    def _set_released(self, target: str, stall: _Stall, released: bool) -> None:
        if stall.released and not released:
            log.info(
                "link %s -> %s: the target acknowledges again; it holds truncation", self.node_id, target
            )
        stall.released = released
        self.metrics.changelog_link_released.labels(self.node_id, target).set(int(released))


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
        # Links whose target acknowledges nothing may hold truncation this long (0: for ever).
        hold_limit: HoldLimit | None = None,
        # The targets whose link has a session open now (HoldLimit never releases those).
        link_connected: Callable[[], Collection[str]] = frozenset,
        link_opening: Callable[[], Collection[str]] = frozenset,
        # Awaited with the truncation point before entries up to it are deleted, by whoever
        # reads the log after its senders (the anti-entropy digest trees).
        before_truncating: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.committer = committer
        self.metrics = metrics
        self.offload = offload
        self.link_acks = link_acks
        self.backup_shipped = backup_shipped
        self.collector = collector
        self.interval_s = interval_s
        self.hold_limit = hold_limit
        self.link_connected = link_connected
        self.link_opening = link_opening
        self.before_truncating = before_truncating
        # The stalls as stored (None: not read yet).
        self._stored_stalls: Away | None = None

    async def pass_once(self) -> LogStart:
        """Truncates what it may (bounded), then collects tombstones; returns the log's start."""
        last = await self.offload.run(self.engine.last_lsn)
        every_link = acks = self.link_acks()
        if acks is not None and self.hold_limit is not None:
            acks = await self._holding(self.hold_limit, acks, last)
        point = truncation_point(
            last, acks, self.backup_shipped() if self.backup_shipped is not None else None
        )
        start = await self.offload.run(self.engine.log_start)
        budget = PASS_ENTRIES_MAX
        if self.before_truncating is not None and start.lsn < point:
            await self.before_truncating(min(point, start.lsn + budget))
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
            await self.collector.pass_once(collection_start(start, every_link))
        return start

    async def _holding(self, hold_limit: HoldLimit, acks: Mapping[str, int], last: int) -> dict[str, int]:
        """hold_limit.holding, with the stalls of away targets kept across restarts: read at the
        first pass, written when they change (a target goes away or comes back: rare) and, while
        some target is away, when the time this node was last seen running is RUNNING_REFRESH_S
        old (or a tenth of the hold limit): a restart counts a stall only up to that time."""
        if self._stored_stalls is None:
            self._stored_stalls = stalls_from_bytes(await self.offload.run(self.engine.get_meta, STALLS_META))
            hold_limit.resume(self._stored_stalls)
        kept = hold_limit.holding(acks, last, self.link_connected(), self.link_opening())
        away, stored = hold_limit.away(), self._stored_stalls
        if away.stalls != stored.stalls or (away.stalls and self._running_due(hold_limit, away, stored)):

            def store(engine: StorageEngine) -> None:
                engine.put_meta(STALLS_META, stalls_to_bytes(away))

            await self.committer.run(store)
            self._stored_stalls = away
        return kept

    @staticmethod
    def _running_due(hold_limit: HoldLimit, away: Away, stored: Away) -> bool:
        """Whether the stored last-running time is old enough to refresh (never while no link
        is ever released: the time counted does not matter then)."""
        refresh_s = min(RUNNING_REFRESH_S, hold_limit.hold_max_s / 10)
        return hold_limit.hold_max_s > 0 and away.running - stored.running >= refresh_s

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
