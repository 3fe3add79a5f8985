"""`domicile up --tiers`: the regional tier servers a cluster on this machine runs on.

One MongoDB wire-protocol server (SecantusDB, from PyPI) that every region's nodes use as their
primary store, each region in a database of its own; one redis-server that every region's nodes
use as their read cache, each region in a Redis database (number) of its own; and one S3 server
(SeaweedFS, from PyPI) that holds every region's backups, each region in a bucket of its own
(`backup_config` writes the cluster config that names them). All listen on loopback, on the
machine the regions' nodes run on: that is what puts them "in the region" here (rules
cache-in-region and the backup bucket's location). The servers start before the nodes, as child
processes in their own process group, and stop after them.

To add a tier, give TierServers another server: a TierServer with its command line and the node
flags that point a node (or a region's nodes) at it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from domicile.errors import FailedPrecondition, InvalidArgument
from domicile.ports import free_port
from domicile.redis_server import redis_server_binary
from domicile.s3_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, weed_binary

_POLL_S = 0.1


@dataclass
class TierServer:
    name: str
    argv: tuple[str, ...]
    host: str
    port: int
    log_path: Path
    # Flags every node gets to use this server.
    node_args: tuple[str, ...]
    # Flags the nodes of one region get on top (region name -> flags).
    region_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)


def mongodb_server(data_dir: Path, host: str, port: int, python: str = sys.executable) -> TierServer:
    """SecantusDB on host:port, its data in DATA_DIR/mongodb. --sync-on-commit: without it a
    journaled write is acknowledged before it is on disk (README, MongoDB engine)."""
    if importlib.util.find_spec("secantus") is None:
        raise FailedPrecondition(
            "--tiers runs SecantusDB, which is not installed: pip install secantusdb (make setup does)"
        )
    return TierServer(
        name="mongodb",
        argv=(
            python,
            "-m",
            "secantus",
            "--host",
            host,
            "--port",
            str(port),
            "--storage-path",
            str(data_dir / "mongodb"),
            "--log-level",
            "WARNING",
            "--sync-on-commit",
        ),
        host=host,
        port=port,
        log_path=data_dir / "logs" / "mongodb.log",
        node_args=("--engine", "mongodb", "--mongodb-uri", f"mongodb://{host}:{port}/"),
    )


def redis_cache_server(data_dir: Path, host: str, port: int, regions: Sequence[str]) -> TierServer:
    """redis-server on host:port, keeping nothing on disk and evicting only keys with a TTL (what
    node/cache/ expects, domicile/redis_server.py); region i of `regions` caches in database i."""
    binary = redis_server_binary()  # FailedPrecondition saying how to install it
    directory = data_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    return TierServer(
        name="redis",
        argv=(
            binary,
            "--bind",
            host,
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            "256mb",
            "--maxmemory-policy",
            "volatile-lru",
            "--daemonize",
            "no",
            "--databases",
            str(max(16, len(regions))),
        ),
        host=host,
        port=port,
        log_path=data_dir / "logs" / "redis.log",
        node_args=(),
        region_args={
            region: ("--cache-redis-url", f"redis://{host}:{port}/{i}", "--cache-redis-region", region)
            for i, region in enumerate(regions)
        },
    )


BACKUP_BUCKET_PREFIX = "domicile-backup-"
# The credentials the nodes sign S3 requests with (the local server checks none).
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY}


def s3_backup_server(data_dir: Path, host: str, port: int) -> TierServer:
    """SeaweedFS (`weed server`: master, volume, filer and the S3 gateway in one process) with
    its S3 gateway on host:port, its data in DATA_DIR/s3; its inner servers on free ports."""
    try:
        weed = weed_binary()
    except RuntimeError as error:
        raise FailedPrecondition(str(error)) from None
    data = data_dir / "s3"
    data.mkdir(parents=True, exist_ok=True)
    inner = {
        name: free_port(host)
        for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc",
        )
    }  # fmt: skip
    return TierServer(
        name="s3",
        argv=(
            weed,
            "server",
            f"-ip={host}",
            f"-ip.bind={host}",
            f"-dir={data}",
            "-s3",
            f"-s3.port={port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Small volumes and enough of them (domicile/s3_server.py says why).
            "-master.volumeSizeLimitMB=64",
            "-volume.max=200",
            *(f"-{name}={p}" for name, p in inner.items()),
        ),
        host=host,
        port=port,
        log_path=data_dir / "logs" / "s3.log",
        node_args=(),
    )


def backup_config(config_path: Path, endpoint: str) -> Path:
    """The cluster config with a `backup` section for every region that has none: the bucket
    `domicile-backup-REGION` on `endpoint`, located in the region. Written beside the original
    (as `.NAME.tiers.yaml`), so that the files it names relative to its directory still resolve."""
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise InvalidArgument(f"cluster config {config_path}: {error}") from None
    for region in data.get("regions") or []:
        if isinstance(region, dict) and "backup" not in region:
            region["backup"] = {
                "endpoint": endpoint,
                "bucket": BACKUP_BUCKET_PREFIX + str(region["name"]),
                "bucket_region": str(region["name"]),
            }
    derived = config_path.with_name(f".{config_path.stem}.tiers.yaml")
    try:
        derived.write_text(
            "# Written by `domicile up --tiers` from "
            f"{config_path.name}: every region's backups in the local S3 server.\n"
            + yaml.safe_dump(data, sort_keys=False),
            encoding="utf-8",
        )
    except OSError as error:
        raise FailedPrecondition(
            f"cannot write {derived} (the cluster config with the regions' backup buckets): {error}"
        ) from None
    return derived


class TierServers:
    def __init__(self, servers: list[TierServer]) -> None:
        self.servers = servers

    def node_args(self) -> tuple[str, ...]:
        return tuple(arg for server in self.servers for arg in server.node_args)

    def region_args(self) -> dict[str, tuple[str, ...]]:
        found: dict[str, tuple[str, ...]] = {}
        for server in self.servers:
            for region, args in server.region_args.items():
                found[region] = found.get(region, ()) + args
        return found

    def start(self, timeout_s: float) -> None:
        """Starts every server and waits until each accepts connections."""
        for server in self.servers:
            server.log_path.parent.mkdir(parents=True, exist_ok=True)
            server.log = server.log_path.open("ab")
            server.process = subprocess.Popen(
                server.argv,
                stdin=subprocess.DEVNULL,
                stdout=server.log,
                stderr=server.log,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                process_group=0,
            )
        deadline = time.monotonic() + timeout_s
        for server in self.servers:
            while not _accepts(server.host, server.port):
                if server.process is not None and server.process.poll() is not None:
                    raise FailedPrecondition(
                        f"{server.name} exited with code {server.process.returncode}; see {server.log_path}"
                    )
                if time.monotonic() > deadline:
                    raise FailedPrecondition(
                        f"{server.name} did not listen on {server.host}:{server.port} within "
                        f"{timeout_s:g} s; see {server.log_path}"
                    )
                time.sleep(_POLL_S)

    def exited(self) -> TierServer | None:
        return next((s for s in self.servers if s.process is not None and s.process.poll() is not None), None)

    def stop(self, timeout_s: float) -> None:
        """Asks every server to stop at once (they are independent; some take seconds to shut
        down), then waits for each, killing one that outlasts timeout_s."""
        running = [s for s in reversed(self.servers) if s.process is not None and s.process.poll() is None]
        for server in running:
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
        for server in self.servers:
            process = server.process
            if process is not None:
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout_s)
            if server.log is not None:
                server.log.close()
            server.process = None


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
