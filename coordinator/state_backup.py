"""The coordinator's state (nodes, subject requests, erasure receipts, legal holds, audit-head
pins, the erasure-list key) backed up to its own region's bucket, and brought back.

Every interval in which the state changed, a consistent copy of the SQLite store (its online
backup API) goes up as <prefix>coordinator/<UTC yyyymmddThhmmss><ms>Z.sqlite3 with its sha256 in
the metadata. Copies older than the retention window are deleted, the newest always kept.
`domicile coordinator restore --region R --data-dir D [--to RFC3339]` writes the newest copy (as
of the point) into an empty data directory, after checking its sha256.

The bucket is the one the cluster config names for the coordinator's region, checked like a
node's (domicile.backup.residency): the state names data subjects.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from coordinator.store import CoordinatorStore
from domicile.backup.bucket import Bucket
from domicile.backup.format import parse_time, sha256_hex
from domicile.backup.residency import check_bucket_location
from domicile.cluster import BackupSpec, ClusterSpec, load_cluster
from domicile.errors import DomicileError, FailedPrecondition, InvalidArgument, NotFound
from domicile.hlc import wall_ms

log = logging.getLogger(__name__)

STATE_DIR = "coordinator/"
_DAY_MS = 86_400_000


def backup_target(cluster: ClusterSpec, region: str) -> BackupSpec | None:
    if not region:
        return None
    spec = cluster.region(region)
    if spec is None:
        raise InvalidArgument(f"coordinator region {region!r} is not configured: {cluster.region_names()}")
    check_bucket_location(cluster, region)
    return spec.backup


def _name(ms: int) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + f"{ms % 1000:03d}Z.sqlite3"


def _time_of(name: str) -> int:
    stamp = name.rsplit("/", 1)[-1].removesuffix("Z.sqlite3")
    # The name is UTC: timegm reads it as such (mktime would read it as local time, with the
    # host's daylight saving time applied).
    seconds = time.strptime(stamp[:15], "%Y%m%dT%H%M%S")
    return calendar.timegm(seconds) * 1000 + int(stamp[15:18])


class StateBackup:
    def __init__(
        self, store: CoordinatorStore, spec: BackupSpec, clock_ms: Callable[[], int] = wall_ms
    ) -> None:
        self.store = store
        self.spec = spec
        self.bucket = Bucket(spec)
        self.clock_ms = clock_ms
        self._shipped_changes = -1
        self.last_key = ""
        self.failures = 0

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.ship()
            except (DomicileError, OSError) as error:
                self.failures += 1
                log.warning("coordinator state backup failed (%s); retrying", error)
            await asyncio.sleep(interval_s)

    async def ship(self) -> str:
        """Uploads a copy when the state changed since the last one; returns its key or ""."""
        changes = self.store.changes()
        if changes == self._shipped_changes:
            return ""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.sqlite3"
            # On the loop's thread: the store's connection belongs to it (a small file, fast).
            self.store.copy_to(path)
            body = path.read_bytes()
        key = self.spec.prefix + STATE_DIR + _name(self.clock_ms())
        await asyncio.to_thread(self._upload, key, body)
        self._shipped_changes = changes
        self.last_key = key
        return key

    def _upload(self, key: str, body: bytes) -> None:
        self.bucket.ensure()
        self.bucket.put(key, body)
        horizon = self.clock_ms() - self.spec.retention_days * _DAY_MS
        old = [o.key for o in self.bucket.objects(self.spec.prefix + STATE_DIR)]
        for name in old[:-1]:
            if _time_of(name) < horizon:
                self.bucket.delete_prefix(name)


def restore_state(spec: BackupSpec, data_dir: Path, to_ms: int | None = None) -> tuple[str, int]:
    """Writes the newest state copy (at or before to_ms) into data_dir; returns its key and size."""
    target = data_dir / CoordinatorStore.DB_NAME
    if target.exists():
        raise FailedPrecondition(
            f"{data_dir} already holds a coordinator state; restore into an empty directory"
        )
    bucket = Bucket(spec)
    copies = [o.key for o in bucket.objects(spec.prefix + STATE_DIR) if o.key.endswith(".sqlite3")]
    if to_ms is not None:
        copies = [k for k in copies if _time_of(k) <= to_ms]
    if not copies:
        raise NotFound(
            f"no coordinator state copy in bucket {spec.bucket}" + (" by that time" if to_ms else "")
        )
    body, _ = bucket.get(copies[-1])
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".restoring")
    tmp.write_bytes(body)
    if sha256_hex(tmp.read_bytes()) != sha256_hex(body):
        raise FailedPrecondition(f"{tmp} was not written back intact")
    tmp.replace(target)
    return copies[-1], len(body)


def restore_main(argv: Sequence[str]) -> int:
    """`domicile coordinator restore`: the coordinator's state back from its region's bucket."""
    parser = argparse.ArgumentParser(
        prog="domicile coordinator restore",
        description="Write the coordinator's state, as last backed up to its region's bucket, into "
        "an empty data directory; then start the coordinator on it.",
    )
    parser.add_argument("--cluster-config", required=True, type=Path, help="the cluster config")
    parser.add_argument("--region", required=True, help="the region the coordinator backed up to")
    parser.add_argument("--data-dir", required=True, type=Path, help="an empty data directory")
    parser.add_argument("--to", help="the newest copy at or before this RFC 3339 time (default: newest)")
    args = parser.parse_args(argv)
    try:
        spec = backup_target(load_cluster(args.cluster_config), args.region)
        if spec is None:
            raise InvalidArgument(f"region {args.region} has no backup bucket in {args.cluster_config}")
        key, size = restore_state(spec, args.data_dir, parse_time(args.to) if args.to else None)
    except DomicileError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    print(f"restored the coordinator state from {key} ({size} bytes) into {args.data_dir}")
    return 0
