"""`domicile restore --region R [--to RFC3339] --data-dir D [--mongodb-uri U [--mongodb-database
DB]]`: rebuilds a node's store from its region's backup bucket, as of the newest backed-up write
or a point in time, into a SQLite store in D or into the region's MongoDB database (D then holds
only the incarnation file, as a node on MongoDB keeps it in its data directory).

The newest generation whose snapshot had finished by the point is read: its snapshot states,
then its segments' log entries up to the point (entries are in HLC order, so the replay stops at
the first one past it), continuing with the segments of the incarnation's later generations
(a point before the next snapshot finished may lie past the chosen generation's last segment;
the next generation's segments start at or before where it ends: Catalog.chain). A point the
segments do not cover (a hole in the log positions they hold before it) is refused, naming
the ranges that are covered: a restore never gives less than what was acknowledged before the
point without saying so. The store is built as a NEW INCARNATION of the node: epoch E, above every
epoch the bucket knows for the node and at least the restore time in seconds, recorded in the
data directory's `incarnation` file; the node then writes with writer id "<node id>.E". Its dots
and change-log positions are those of a writer that never wrote before, so no dot or position
is reused and no peer mistakes its new writes for ones it had already received (peers keep
their positions per writer id, which the replication hello carries). The old incarnation's
writes are in the restored states under the old writer id, like any replica's.

Writes the peers received from the node after the backup point come back from them only by
anti-entropy; writes of other nodes come back by replication (the restored store has no
inbound positions, so every peer resends its log). Values stay sealed; the data keys are not in
the backup and the node opens them from its region's key store (--region-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from domicile.backup import format as fmt
from domicile.backup.bucket import Bucket
from domicile.backup.catalog import Catalog, Chain, Generation, SameEntries, Segment
from domicile.backup.format import parse_time
from domicile.backup.state_check import checked_index_fields
from domicile.causality import Mutation
from domicile.cluster import BackupSpec, load_cluster
from domicile.errors import DomicileError, FailedPrecondition, InvalidArgument, NotFound
from domicile.fsync import fsync_path
from domicile.hlc import physical_ms, wall_ms
from domicile.model import check_node_id, writer_id
from domicile.wire.records import mutation_from_bytes
from node.backup.prefetch import prepared_in_order
from node.config import EngineSettings, MongoSettings, SQLiteSettings, default_mongodb_database
from node.engine.backend import StateRow
from node.engine.core import EngineCore
from node.engine.factory import SQLITE_FILE, open_engine
from node.incarnation import INCARNATION_FILE, write_epoch

# Log entries replayed per transaction (at most what apply_remote takes at once).
REPLAY_BATCH = 5_000
# Where a SQLite store is built before it is put in place, inside the data directory (the
# same file system, so that the final rename is atomic).
STAGING_DIR = ".restore-staging"


@dataclass(frozen=True)
class RestoreSummary:
    node_id: str
    generation: str
    epoch: int
    writer_id: str
    states: int
    log_entries: int
    restored_lsn: int
    restored_to_ms: int
    seconds: float
    objects: int
    bytes: int


def choose_generation(generations: Sequence[Generation], to_ms: int | None) -> Generation:
    complete = [g for g in generations if g.manifest is not None]
    if to_ms is not None:
        complete = [g for g in complete if g.manifest is not None and g.manifest.finished_ms <= to_ms]
    if not complete:
        if to_ms is None:
            raise NotFound("no complete backup generation (every one lacks its manifest)")
        raise NotFound(
            f"no backup generation had finished its snapshot by {_when(to_ms)}; "
            "`domicile backup verify` reports the restorable window"
        )
    return complete[-1]


def restore(
    spec: BackupSpec,
    node_id: str,
    region: str,
    data_dir: str | Path,
    to_ms: int | None = None,
    progress: Callable[[str], None] = lambda _: None,
    now_ms: Callable[[], int] = wall_ms,
    engine_settings: EngineSettings | None = None,
) -> RestoreSummary:
    """Rebuilds the store (SQLite in `data_dir` unless `engine_settings` names a MongoDB
    database) and writes the incarnation file into `data_dir`."""
    started = time.monotonic()
    check_node_id(node_id)
    # A SQLite store is a new file no one reads until it is complete: nothing needs to be on
    # disk before the end, when the whole file is fsynced and renamed into place (_put_in_place).
    settings = engine_settings or SQLiteSettings(synchronous="OFF")
    data = Path(data_dir)
    if (data / SQLITE_FILE).exists() or (data / INCARNATION_FILE).exists():
        raise FailedPrecondition(
            f"{data} already holds a store; restore into an empty directory (nothing was changed)"
        )
    catalog = Catalog(Bucket(spec), spec.prefix)
    generations = catalog.generations(node_id)
    if not generations:
        raise NotFound(f"no backup of node {node_id} in bucket {spec.bucket}")
    chosen = choose_generation(generations, to_ms)
    manifest = chosen.manifest
    assert manifest is not None
    if manifest.region != region or manifest.node_id != node_id:
        # Records placed for one region must not come back as another's (residency); two
        # regions may share a bucket and its prefix, so the manifest, not the path, says whose.
        raise FailedPrecondition(
            f"generation {chosen.name} is a backup of node {manifest.node_id} in region "
            f"{manifest.region}; it cannot be restored as node {node_id} in region {region} "
            "(nothing was changed)"
        )
    chain = catalog.chain(generations, chosen)
    _check_covered(catalog, generations, chain, to_ms)
    known = max((g.manifest.epoch for g in generations if g.manifest is not None), default=0)
    epoch = max(known + 1, now_ms() // 1000)
    writer = writer_id(node_id, epoch)
    continued = ", ".join(g.name for g in chain.generations[1:])
    progress(
        f"generation {chosen.name}: {len(manifest.parts)} snapshot parts, {len(chain.segments)} segments"
        + (f" (continued in {continued})" if continued else "")
    )
    data.mkdir(parents=True, exist_ok=True)
    fresh_file = isinstance(settings, SQLiteSettings)
    build_dir = data / STAGING_DIR if fresh_file else data
    if fresh_file:
        shutil.rmtree(build_dir, ignore_errors=True)  # what a restore cut short left
        settings = SQLiteSettings(synchronous="OFF")
    engine = open_engine(settings, str(build_dir), writer, region)
    assert isinstance(engine, EngineCore)
    if isinstance(settings, MongoSettings):
        _refuse_existing_store(engine, node_id, settings)
    try:
        states = _load_snapshot(catalog, manifest, engine, progress)
        engine.carry_purge_point(manifest.purged_before_hlc)
        entries, restored_lsn, restored_ms = _replay_segments(
            catalog, chain, writer_id(node_id, manifest.epoch), engine, to_ms, progress
        )
    finally:
        engine.close()
    if fresh_file:
        _put_in_place(build_dir, data)
    # Last: a directory with a store but no incarnation file is not a restored node.
    write_epoch(data, epoch)
    return RestoreSummary(
        node_id=node_id,
        generation=chosen.name,
        epoch=epoch,
        writer_id=writer,
        states=states,
        log_entries=entries,
        restored_lsn=restored_lsn,
        restored_to_ms=restored_ms,
        seconds=time.monotonic() - started,
        objects=1 + len(manifest.parts) + len(chain.segments),
        bytes=chosen.bytes + sum(s.size for s in chain.segments if s not in chosen.segments),
    )


def _check_covered(
    catalog: Catalog, generations: Sequence[Generation], chain: Chain, to_ms: int | None
) -> None:
    """Refuses a point the chain does not cover: past a gap in its positions the segments hold no
    write, so a point from the chain's newest write on may miss writes acknowledged before it.
    Before that write every entry up to the point is in the chain (HLC order), and with no gap
    the chain runs to the incarnation's newest backed-up write."""
    if chain.gap is None:
        return
    end_ms = catalog.chain_end_ms(chain)
    if to_ms is not None and to_ms < end_ms:
        return
    first, last = chain.gap
    where = "the newest backed-up write" if to_ms is None else _when(to_ms)
    before = f" (before generation {chain.past_gap.name})" if chain.past_gap is not None else ""
    raise FailedPrecondition(
        f"cannot restore to {where}: log positions {first}..{last} are in no segment{before}, so "
        f"writes acknowledged before that point would be missing; restorable: "
        f"{_ranges(catalog.restorable(generations))} (nothing was changed)"
    )


def _ranges(ranges: Sequence[tuple[int, int | None]]) -> str:
    shown = [
        f"{_when(start)} to {_when(end)}" if end is not None else f"from {_when(start)} on"
        for start, end in ranges
        if end is None or end > start
    ]
    return "; ".join(shown) or "none"


def _load_snapshot(
    catalog: Catalog, manifest: fmt.Manifest, engine: EngineCore, progress: Callable[[str], None]
) -> int:
    """Stores every state of the generation's snapshot; returns how many. Each part is
    downloaded, checked against its sha256 and checked state by state in the prefetch threads
    while the part before it is written, one transaction per part."""

    def checked_rows(part: fmt.SnapshotPart) -> list[StateRow]:
        body, _ = catalog.bucket.get(part.key, part.sha256)
        rows = []
        for namespace, key, blob in fmt.read_snapshot_rows(body):
            index = checked_index_fields(namespace, key, blob)
            rows.append(StateRow(namespace, key, blob, index.live, index.subjects, index.classifications))
        return rows

    states = 0
    with contextlib.closing(prepared_in_order(checked_rows, manifest.parts)) as parts:
        for i, (_, rows) in enumerate(parts, 1):
            engine.restore_checked_states(rows)
            states += len(rows)
            progress(f"snapshot part {i}/{len(manifest.parts)}: {states} states")
    return states


def _replay_segments(
    catalog: Catalog,
    chain: Chain,
    source: str,
    engine: EngineCore,
    to_ms: int | None,
    progress: Callable[[str], None],
) -> tuple[int, int, int]:
    """Replays the chain's log entries after its base position, up to to_ms (entries are in
    HLC order, so the replay stops at the first one past it); returns (entries replayed, the
    position and the time restored to).

    Segments may overlap (a retried upload whose first attempt landed, a resumed generation, a
    later generation's segments starting before the chain's end): each position is replayed
    once, from the first segment holding it, and a segment holding another entry at a position
    the replay takes or stops at refuses the restore before any of its entries is replayed.
    Positions past the one it stops at are never replayed, so their copies are not compared:
    a damaged copy of a later write does not refuse a point before it. The segments are in
    chain order, not by first position, so reading goes on while any segment left starts at or
    before that position."""
    manifest = chain.start.manifest
    assert manifest is not None

    def decoded(segment: Segment) -> tuple[list[tuple[int, bytes]], list[tuple[int, Mutation]]]:
        entries = [(lsn, blob) for lsn, blob in catalog.log_entries(segment) if lsn > manifest.base_lsn]
        return entries, [(lsn, mutation_from_bytes(blob)) for lsn, blob in entries]

    same = SameEntries(chain.segments)
    entries = 0
    restored_lsn, restored_ms = manifest.base_lsn, manifest.finished_ms
    stop: int | None = None  # the position of the first entry written after to_ms, once read
    with contextlib.closing(prepared_in_order(decoded, chain.segments)) as segments:
        for i, (_, (raw, logged)) in enumerate(segments, 1):
            # Not this segment's first position alone: a later generation's segments may start
            # before it, and their copies of the stop position are compared too.
            if stop is not None and same.lowest_first(i - 1) > stop:
                break
            batch: list[tuple[int, Mutation]] = []
            if stop is None:
                batch, stop = _to_replay(logged, restored_lsn, to_ms)
            same.check(i - 1, raw if stop is None else [(lsn, blob) for lsn, blob in raw if lsn <= stop])
            for start in range(0, len(batch), REPLAY_BATCH):
                engine.apply_remote(source, [m for _, m in batch[start : start + REPLAY_BATCH]], 0)
            if batch:
                restored_lsn = batch[-1][0]
                restored_ms = max(restored_ms, *(physical_ms(m.version.hlc) for _, m in batch))
            entries += len(batch)
            progress(f"segment {i}/{len(chain.segments)}: {entries} log entries replayed")
    return entries, restored_lsn, restored_ms


def _to_replay(
    logged: Sequence[tuple[int, Mutation]], restored_lsn: int, to_ms: int | None
) -> tuple[list[tuple[int, Mutation]], int | None]:
    """A segment's entries past restored_lsn (those before it were replayed from an earlier
    segment this one overlaps) up to the first one written after to_ms; and that one's
    position, when it came (None: the replay goes on)."""
    batch: list[tuple[int, Mutation]] = []
    for lsn, mutation in logged:
        if lsn <= restored_lsn:
            continue
        if to_ms is not None and physical_ms(mutation.version.hlc) > to_ms:
            return batch, lsn
        batch.append((lsn, mutation))
    return batch, None


def _put_in_place(staging: Path, data: Path) -> None:
    """The store was built with synchronous=OFF: its whole file is fsynced now, then renamed
    into the data directory and the directory fsynced, so the store appears complete and on
    disk, or not at all."""
    built = staging / SQLITE_FILE
    # Closing the last connection checkpoints the WAL into the file and deletes it: anything
    # left beside the file would hold writes the file lacks.
    leftovers = sorted(p.name for p in staging.iterdir() if p.name != SQLITE_FILE)
    if leftovers:
        raise FailedPrecondition(
            f"the restored store in {staging} was not closed cleanly ({', '.join(leftovers)} left "
            "beside it); nothing was put in place: run the restore again"
        )
    fsync_path(built)
    os.replace(built, data / SQLITE_FILE)
    fsync_path(data)
    staging.rmdir()


def _refuse_existing_store(engine: EngineCore, node_id: str, settings: MongoSettings) -> None:
    """A region's database may hold the records of its other nodes (a restore merges into them),
    but not a store of this node: its old incarnation would come back beside the new one."""
    from node.engine.mongo import MongoEngine  # only a restore into MongoDB loads the driver

    assert isinstance(engine, MongoEngine)
    existing = [w for w in engine.writer_ids_of(node_id) if w != engine.node_id]
    if existing:
        engine.close()
        raise FailedPrecondition(
            f"database {settings.database} already holds a store of node {node_id} (writer ids "
            f"{', '.join(existing)}); restore into a database without one, e.g. after dropping "
            "it (nothing was changed)"
        )


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="milliseconds")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="domicile restore",
        description="Rebuild a node's store from its region's backup bucket as a new incarnation.",
    )
    parser.add_argument("--region", "-r", required=True, help="the node's region")
    parser.add_argument("--data-dir", required=True, help="an empty directory for the rebuilt store")
    parser.add_argument("--node-id", help="the node to restore (default: the region)")
    parser.add_argument("--to", help="restore as of this RFC 3339 time (default: the newest backed-up write)")
    parser.add_argument(
        "--mongodb-uri",
        help="restore into this MongoDB server (a replica set) instead of a SQLite store in --data-dir, "
        "which then holds the incarnation file only",
    )
    parser.add_argument(
        "--mongodb-database", help="the region's database (default: domicile_<region, dashes as underscores>)"
    )
    parser.add_argument(
        "--config",
        default="deploy/cluster.yaml",
        help="cluster config naming the bucket (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        cluster = load_cluster(args.config)
        region = cluster.region(args.region)
        if region is None or region.backup is None:
            raise InvalidArgument(f"region {args.region} has no backup bucket in {args.config}")
        to_ms = parse_time(args.to) if args.to else None
        if args.mongodb_database and not args.mongodb_uri:
            raise InvalidArgument("--mongodb-database needs --mongodb-uri (the server to restore into)")
        settings: EngineSettings | None = None
        if args.mongodb_uri:
            database = args.mongodb_database or default_mongodb_database(args.region)
            settings = MongoSettings(uri=args.mongodb_uri, database=database)
        target = f"database {settings.database}" if isinstance(settings, MongoSettings) else args.data_dir

        def progress(line: str) -> None:
            print(f"restore: {line}", file=sys.stderr, flush=True)

        s = restore(
            region.backup, args.node_id or args.region, args.region, args.data_dir, to_ms, progress,
            engine_settings=settings,
        )  # fmt: skip
    except DomicileError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    print(
        f"restored node {s.node_id} from generation {s.generation}: {s.states} states, "
        f"{s.log_entries} log entries, through position {s.restored_lsn} ({_when(s.restored_to_ms)}), "
        f"{s.objects} objects ({s.bytes} bytes) in {s.seconds:.1f} s\n"
        f"into {target}\n"
        f"new incarnation {s.epoch}: the node writes as {s.writer_id}; start it with "
        f"--data-dir {args.data_dir}{' and that database' if settings is not None else ''} "
        "and its region's key store (--region-dir)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
