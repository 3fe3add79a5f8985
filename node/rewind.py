"""A store copied back by hand (an old copy of the data directory put in place of the current
one) must not hand out again the dots and change-log positions it already gave: peers would
drop the new writes as duplicates of old ones, and writes would be lost without a trace.

The node cannot see this from its own files: the copy is consistent, just old. The coordinator
can: every node reports the last position of its change log when it registers and in every
heartbeat, and the coordinator remembers the highest one per incarnation. At start, before the
node takes any write, it reports its store's position in a heartbeat and hears back the highest
already seen (`check_with_coordinator`); a store behind the position its node
already reported was rewound. The node then becomes a new incarnation of itself (`reincarnate`),
as a restore does (node.backup.restore): a new epoch, so a new writer id whose dots and positions
nobody has seen, and the old store's key states merged in under their own writer ids. Writes the
peers hold from after the copy come back by anti-entropy, which the node starts at once.

What this does not catch: a rewind to a point the coordinator had not yet heard of (writes of
the last heartbeat interval before the copy was taken back), and one across a coordinator
restart (the coordinator keeps the positions in memory; the nodes report them again when they
register).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from domicile.fsync import fsync_path
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.model import writer_id
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from node.config import SQLiteSettings
from node.engine.base import StorageEngine
from node.engine.core import EngineCore
from node.engine.factory import SQLITE_FILE, open_engine
from node.incarnation import write_epoch

log = logging.getLogger("domicile.rewind")

BATCH_ROWS = 5_000
WORK_DIR = "reincarnation"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class StartCheck:
    """What the coordinator answered to the check at start."""

    last_lsn_seen: int
    coordinator_unix_ms: int
    sent_monotonic_s: float
    received_monotonic_s: float


async def check_with_coordinator(
    dialer: Dialer, coordinator: str, node_id: str, epoch: int, last_lsn: int, deadline_s: float
) -> StartCheck | None:
    """Reports this store's last position in a heartbeat and learns the highest the coordinator
    had seen from this incarnation; None when it does not answer within the deadline (the node
    then starts unchecked, as it would have before) or does not know the node yet."""
    request = cpb.HeartbeatRequest(node_id=node_id, last_lsn=last_lsn, epoch=epoch)
    async with dialer.channel(coordinator, ExpectedPeer.coordinator()) as channel:
        sent = time.monotonic()
        try:
            answer: cpb.HeartbeatResponse = await cpb_grpc.CoordinatorServiceStub(channel).Heartbeat(
                request, timeout=deadline_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                log.info("coordinator %s does not know node %s yet: its first start", coordinator, node_id)
            else:
                log.warning(
                    "coordinator %s did not answer the check at start (%s: %s); starting without "
                    "knowing whether this store was copied back from an older copy",
                    coordinator,
                    error.code().name,
                    error.details(),
                )
            return None
    return StartCheck(answer.last_lsn_seen, answer.coordinator_unix_ms, sent, time.monotonic())


def reincarnate(
    engine: StorageEngine, data_dir: Path, node_id: str, region: str, epoch: int, topology_meta: str
) -> None:
    """Rebuilds the SQLite store in `data_dir` (open as `engine`, which this closes) as
    incarnation `epoch`: its key states, erasure blocks and cached topology are kept, its change
    log (the old writer's) is not. Blocks."""
    work = data_dir / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    fresh = open_engine(SQLiteSettings(synchronous="FULL"), str(work), writer_id(node_id, epoch), region)
    assert isinstance(fresh, EngineCore)  # SQLite: the only engine a rewind is rebuilt on
    states = 0
    try:
        with engine.snapshot() as rows:
            batch = []
            for row in rows:
                batch.append(row)
                if len(batch) >= BATCH_ROWS:
                    fresh.restore_states(batch)
                    states += len(batch)
                    batch = []
            if batch:
                fresh.restore_states(batch)
                states += len(batch)
        for digest, request_id in engine.blocked_subjects().items():
            fresh.block_subject(digest, request_id)
        fresh.carry_purge_point(engine.purged_before())
        cached = engine.get_meta(topology_meta)
        if cached:
            fresh.put_meta(topology_meta, cached)
    finally:
        fresh.close()
        engine.close()
    for suffix in SQLITE_SIDE_FILES:
        (data_dir / (SQLITE_FILE + suffix)).unlink(missing_ok=True)
    # The store, then the epoch that names its writer id: a crash between the two leaves a store
    # that the engine refuses to open under the old writer id, never one that reuses dots.
    # Each durable before the next: the rebuilt store's bytes, its rename, then the epoch.
    fsync_path(work / SQLITE_FILE)
    (work / SQLITE_FILE).replace(data_dir / SQLITE_FILE)
    fsync_path(data_dir)
    write_epoch(data_dir, epoch)
    shutil.rmtree(work, ignore_errors=True)
    log.warning(
        "node %s: the store was behind what this node had reported (copied back from an older "
        "copy); it now runs as incarnation %d (writer id %s) with the %d key states it held",
        node_id,
        epoch,
        writer_id(node_id, epoch),
        states,
    )
