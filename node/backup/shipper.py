"""Continuous backup of one node's store to its region's bucket.

A generation starts with a base snapshot (the engine's consistent snapshot iterator, cut into
parts of about PART_BYTES), then its manifest; from then on, every interval (1 s by default,
so that at most about a second of acknowledged writes is not yet in the bucket) the change-log
entries written since the last round go up as one segment. A new generation starts every
generation_hours and at every start, and generations no longer needed to restore any point of
the retention window are deleted.

Generations of one incarnation chain: a restore to a point before the next generation's
snapshot finished replays the chosen generation's segments and then the next ones', which
continue them without a hole. That holds because the generation before a new one is shipped
through the new one's base position before its snapshot starts (and, so that writes reach the
bucket during a long snapshot too, after every snapshot part); because the log is not truncated
past that base until the new generation ships from it; and because a shipper starting after a
crash first ships what its incarnation's newest generation had not shipped (`resume`).

What goes up is what the store holds: key states and log entries whose values are sealed under
their subjects' data keys. The data keys and the key-encryption key live outside the store
(keys/) and are never read here, so a restore can never bring back a key an erasure destroyed.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from domicile.backup import format as fmt
from domicile.backup.bucket import Bucket
from domicile.backup.catalog import Catalog
from domicile.cluster import BackupSpec
from domicile.errors import DataCorruption, DomicileError, FailedPrecondition
from domicile.hlc import physical_ms, wall_ms
from domicile.wire.records import mutation_to_bytes
from node.engine.base import StorageEngine
from node.metrics import NodeMetrics

log = logging.getLogger(__name__)

PART_BYTES = 8 * 1024 * 1024
SEGMENT_ENTRIES_MAX = 10_000
SEGMENT_BYTES_MAX = 8 * 1024 * 1024
_DAY_MS = 86_400_000


class LogGap(FailedPrecondition):
    """The change log does not continue from the position the generation's segments reached
    (it was truncated past it): the generation cannot go on without a hole."""


@dataclass
class ShipperState:
    generation: str = ""
    generation_started_ms: int = 0
    shipped_lsn: int = 0


class BackupShipper:
    def __init__(
        self,
        engine: StorageEngine,
        bucket: Bucket,
        spec: BackupSpec,
        node_id: str,
        region: str,
        metrics: NodeMetrics,
        *,
        epoch: int = 0,
        interval_s: float = 0.5,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.engine = engine
        self.bucket = bucket
        self.spec = spec
        self.node_id = node_id
        self.region = region
        self.metrics = metrics
        self.epoch = epoch
        self.interval_s = interval_s
        self.clock_ms = clock_ms
        self.state = ShipperState()
        # The base position of the generation whose snapshot is going up: the log must be kept
        # from there on, although the generation before it ships (and releases) past it.
        self._building_base: int | None = None
        # Guards the state switch at a new generation against truncatable_lsn's reads.
        self._lock = threading.Lock()
        # A new generation starts at every start, after the one this incarnation left is resumed.
        self._started_one = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"backup-{self.node_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Asks the thread to end after its last round and waits up to timeout_s; whether it has
        ended (a snapshot or a slow upload can outlast the wait: call it again)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        delay = self.interval_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.round()
                delay = self.interval_s
            except (DomicileError, OSError, ValueError) as error:
                # The next round retries from the same position: nothing is skipped.
                self.metrics.backup_failures.inc()
                log.warning("backup round failed (%s); retrying", error)
                delay = min(max(delay * 2, self.interval_s), 30.0)
            self._stop.wait(max(0.0, delay - (time.monotonic() - started)))
        # A last round at stop (the writer has stopped by then): a clean shutdown loses nothing.
        if self.state.generation:
            try:
                self.ship_pending()
                self.metrics.backup_last_shipped.set(self.clock_ms() / 1000)
            except (DomicileError, OSError, ValueError) as error:
                self.metrics.backup_failures.inc()
                log.warning("last backup round at stop failed (%s)", error)

    def truncatable_lsn(self) -> int:
        """The position up to which the change log may be truncated: what every generation that
        is still to ship from the log has shipped (0 while none exists)."""
        with self._lock:
            if not self.state.generation:
                return 0
            if self._building_base is None:
                return self.state.shipped_lsn
            return min(self.state.shipped_lsn, self._building_base)

    def round(self) -> None:
        """One shipping round: a new generation when one is due, then the pending segment."""
        if not self._started_one and not self.state.generation:
            self.resume()
        now = self.clock_ms()
        due = now - self.state.generation_started_ms >= self.spec.generation_hours * 3_600_000
        started = not self._started_one or not self.state.generation or due
        if started:
            self.start_generation()
            self._started_one = True
        try:
            self.ship_pending()
        except LogGap as gap:
            # The generation cannot continue without a hole: a new one starts from the log as
            # it is, and the positions in between are in no segment (a restore says so).
            self._end_generation(gap)
            self.start_generation()
            self.ship_pending()
        self.metrics.backup_last_shipped.set(self.clock_ms() / 1000)
        if started:
            # After the round's shipping: deleting old generations (many objects) must not hold
            # back the writes waiting to go up.
            self.expire()

    def _end_generation(self, gap: LogGap) -> None:
        self.metrics.backup_failures.inc()
        log.error("backup generation %s ends: %s; starting a new one", self.state.generation, gap.message)
        with self._lock:
            self.state = ShipperState()

    # -- generations ---------------------------------------------------------------------------

    def resume(self) -> bool:
        """Continues the newest complete generation this incarnation left in the bucket (a node
        that stopped without its last round, or crashed), when the log still continues from its
        last segment: what it had not shipped then goes into it, so its segments reach the next
        generation's base position and a restore between the two misses nothing. Returns whether
        it resumed one."""
        self.bucket.ensure()
        try:
            generations = Catalog(self.bucket, self.spec.prefix).generations(self.node_id)
        except DataCorruption as error:
            log.warning("backup: the previous generation cannot be resumed (%s)", error.message)
            return False
        complete = [(g, g.manifest) for g in generations if g.manifest is not None]
        if not complete or complete[-1][1].epoch != self.epoch:
            return False  # none, or another incarnation's: its positions are not this log's
        previous, manifest = complete[-1]
        shipped = previous.last_lsn
        if shipped > self.engine.last_lsn() or not self._log_continues(shipped):
            log.warning(
                "backup generation %s cannot be resumed: the change log no longer continues from its "
                "position %d; a restore to a point before the next generation's snapshot is refused",
                previous.name, shipped,
            )  # fmt: skip
            return False
        with self._lock:
            self.state = ShipperState(previous.name, manifest.started_ms, shipped)
        log.info("backup generation %s resumed from position %d", previous.name, shipped)
        return True

    def _log_continues(self, shipped: int) -> bool:
        return self.engine.log_start().lsn <= shipped

    def _ship_previous(self) -> None:
        """Ships the generation going out while a new one is built; one whose log was truncated
        past it ends there (the new one starts without it)."""
        if not self.state.generation:
            return
        try:
            self.ship_pending()
        except LogGap as gap:
            self._end_generation(gap)

    def start_generation(self) -> fmt.Manifest:
        """A base snapshot and its manifest; segments then continue from its base position.

        The generation before it is shipped through the base position first: a restore to a
        point before this snapshot finishes uses that generation and continues with this one's
        segments, which start right after the base. It is shipped again after every part, so
        that a long snapshot does not hold writes out of the bucket, and the log is kept from
        the base on (truncatable_lsn) until this generation ships from it."""
        self.bucket.ensure()
        started = self.clock_ms()
        generation = fmt.generation_name(started, secrets.token_hex(4))
        base_lsn = self.engine.last_lsn()
        with self._lock:
            self._building_base = base_lsn
        try:
            self._ship_previous()
            manifest = self._snapshot(generation, started, base_lsn)
        finally:
            with self._lock:
                self._building_base = None
        return manifest

    def _snapshot(self, generation: str, started: int, base_lsn: int) -> fmt.Manifest:
        parts: list[fmt.SnapshotPart] = []
        chunk: list[bytes] = []
        size = rows = 0

        def flush() -> None:
            nonlocal chunk, size, rows
            key = fmt.snapshot_key(self.spec.prefix, self.node_id, generation, len(parts))
            body = b"".join(chunk)
            digest = self.bucket.put(key, body)
            self._count(len(body))
            parts.append(fmt.SnapshotPart(key=key, sha256=digest, bytes=len(body), rows=rows))
            chunk, size, rows = [], 0, 0
            self._ship_previous()

        with self.engine.snapshot() as states:
            for namespace, key, state in states:
                framed = fmt.frame_snapshot_row(namespace, key, state)
                chunk.append(framed)
                size += len(framed)
                rows += 1
                if size >= PART_BYTES:
                    flush()
        if rows or not parts:
            flush()
        manifest = fmt.Manifest(
            node_id=self.node_id,
            region=self.region,
            generation=generation,
            epoch=self.epoch,
            started_ms=started,
            finished_ms=self.clock_ms(),
            base_lsn=base_lsn,
            end_lsn=self.engine.last_lsn(),
            parts=tuple(parts),
            purged_before_hlc=self.engine.purged_before(),
        )
        # What was written during the last part goes up too before the switch (from now on it
        # would wait for this generation's first segment).
        self._ship_previous()
        # And this generation's own segments, from its base on, before its manifest: a restore
        # that chooses it reads no earlier generation's segments, so it must never hold less
        # than the one before (segments without a manifest are read by no restore).
        upcoming = ShipperState(generation, started, base_lsn)
        self._ship(upcoming)
        body = manifest.to_json()
        self.bucket.put(fmt.manifest_key(self.spec.prefix, self.node_id, generation), body)
        self._count(len(body))
        with self._lock:
            self.state = upcoming
            self._building_base = None
        self.metrics.backup_generation_started.set(started / 1000)
        log.info(
            "backup generation %s: %d states in %d parts, base position %d",
            generation, sum(p.rows for p in parts), len(parts), base_lsn,
        )  # fmt: skip
        return manifest

    def ship_pending(self) -> int:
        """Ships every log entry written since the last segment; returns how many."""
        return self._ship(self.state)

    def _ship(self, state: ShipperState) -> int:
        """ship_pending into `state`'s generation, from its shipped position on."""
        shipped = 0
        while True:
            frames: list[bytes] = []
            size = 0
            newest = 0
            first = last = state.shipped_lsn
            while len(frames) < SEGMENT_ENTRIES_MAX and size < SEGMENT_BYTES_MAX:
                batch = self.engine.read_log(last, min(1000, SEGMENT_ENTRIES_MAX - len(frames)))
                if not batch:
                    # Nothing after `last`: nothing written since, or all of it truncated.
                    self._check_continues(state, last, max(last, self.engine.log_start().lsn) + 1)
                    break
                for m in batch:
                    self._check_continues(state, last, m.lsn)
                    framed = fmt.frame_log_entry(m.lsn, mutation_to_bytes(m))
                    frames.append(framed)
                    size += len(framed)
                    newest = max(newest, physical_ms(m.version.hlc))
                    last = m.lsn
            if not frames:
                return shipped
            key = fmt.segment_key(self.spec.prefix, self.node_id, state.generation, first + 1, last)
            body = b"".join(frames)
            self.bucket.put(
                key,
                body,
                {
                    fmt.META_FIRST_LSN: str(first + 1),
                    fmt.META_LAST_LSN: str(last),
                    fmt.META_NEWEST_MS: str(newest),
                },
            )
            self._count(len(body))
            state.shipped_lsn = last
            shipped += len(frames)

    def _check_continues(self, state: ShipperState, last: int, lsn: int) -> None:
        """A segment is named after the positions it holds, and restore and verify trust that
        name: an entry that does not follow the one before (the log truncated past what was
        shipped) must not go into one, or the segment would claim positions it lacks. `lsn`:
        the position the log continues at."""
        if lsn != last + 1:
            raise LogGap(
                f"the change log continues at position {lsn}, not {last + 1}: positions "
                f"{last + 1}..{lsn - 1} were truncated before generation {state.generation} "
                "shipped them; no segment was written"
            )

    def expire(self) -> list[str]:
        """Deletes the generations no point of the retention window needs; returns their names."""
        horizon = self.clock_ms() - self.spec.retention_days * _DAY_MS
        catalog = Catalog(self.bucket, self.spec.prefix)
        deleted = []
        for generation in catalog.expired(self.node_id, horizon, keep=self.state.generation):
            catalog.delete(self.node_id, generation)
            deleted.append(generation)
            log.info(
                "backup generation %s deleted: past the %d-day retention",
                generation,
                self.spec.retention_days,
            )
        return deleted

    def _count(self, size: int) -> None:
        self.metrics.backup_bytes.inc(size)
        self.metrics.backup_objects.inc()
