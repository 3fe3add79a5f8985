"""The torture run's cluster: a coordinator and one node per region, started as processes exactly
as an operator would (`python -m coordinator`, `python -m node`, mutual TLS), with every
connection they open going through the fault router.

Addresses are fixed for the whole run, so that a node killed and restarted comes back where its
peers, its clients and the router expect it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from bench.procs import Children
from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Role
from domicile.identity.tls_files import TlsFiles
from domicile.ports import free_port
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from torture.router import FaultRouter

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT = "torture"
COORDINATOR = "coordinator"
SIBLINGS = "t_siblings"
LWW = "t_lww"
PEOPLE = "t_people"
# Three regions, two of them in the EU, so that a German subject's records have somewhere to go
# besides their origin and at least one region where the policy pack must keep them out.
REGIONS = (
    {"name": "eu-west-1", "country": "IE", "jurisdiction": "EU"},
    {"name": "eu-central-1", "country": "DE", "jurisdiction": "EU"},
    {"name": "us-east-1", "country": "US", "jurisdiction": "US"},
)
COORDINATOR_READY = re.compile(r"coordinator listening on (\S+) metrics (\S+)")
NODE_READY = re.compile(r"node (\S+) region (\S+) listening on (\S+) metrics (\S+)")
STATUS_DEADLINE_S = 3.0
HEARTBEAT_S = 0.5
DRAIN_TIMEOUT_S = 10.0


def cluster_config(pack: str) -> dict[str, Any]:
    every = [r["name"] for r in REGIONS]
    return {
        "policy_pack": pack,
        "regions": list(REGIONS),
        "namespaces": [
            {"name": SIBLINGS, "regions": every, "conflict_mode": "siblings", "owner": CLIENT},
            {"name": LWW, "regions": every, "conflict_mode": "lww", "owner": CLIENT},
            {
                "name": PEOPLE,
                "regions": "global",
                "conflict_mode": "siblings",
                "classification": "personal",
                "retention_class": "user_data",
                "owner": CLIENT,
            },
        ],
        "coordinator": {"heartbeat_interval_ms": int(HEARTBEAT_S * 1000), "missed_heartbeats_max": 4},
    }


@dataclass
class Daemon:
    """One daemon's fixed identity and address; `incarnation` counts its starts."""

    name: str
    region: str
    address: str
    data_dir: Path
    argv: list[str]
    proxy_url: str = ""
    incarnation: int = 0
    running: bool = False
    paused: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def child_name(self) -> str:
        return f"{self.name}.{self.incarnation}"


class TortureCluster:
    def __init__(
        self,
        root: Path,
        router: FaultRouter,
        children: Children,
        engine: str = "sqlite",
        reopen: bool = False,
    ) -> None:
        """`engine`: the nodes' store, "sqlite" (embedded) or "mongodb" (a SecantusDB the run
        starts, one database per region; it is not behind the router and not faulted).
        `reopen`: `root` holds a finished run (its certificates, configuration and stores): start
        that cluster again as it was left, instead of a new one. New certificates would not do:
        the coordinator anchors each region's audit heads to the key it first saw."""
        self.root = root
        self.engine = engine
        self.mongodb_port = free_port() if engine == "mongodb" else 0
        self.router = router
        self.children = children
        self.tls_dir = root / "tls"
        self.config_path = root / "cluster.yaml"
        if not reopen:
            self._make_tls_and_config()
        self.dialer = Dialer.mutual_tls(TlsFiles.in_directory(self.tls_dir, f"client-{CLIENT}"))
        self.coordinator = self._coordinator()
        self.nodes = {r["name"]: self._node(r["name"]) for r in REGIONS}
        self._direct: dict[str, grpc.aio.Channel] = {}
        # The names the clients have on the router (set by the workload).
        self.clients: list[str] = []

    def _make_tls_and_config(self) -> None:
        ca = pki.init_ca(self.tls_dir, "domicile")
        pki.issue_coordinator(ca).write(self.tls_dir, "coordinator")
        roles = (Role.APP, Role.OPERATOR, Role.AUDITOR, Role.DPO)
        pki.issue_client(ca, CLIENT, roles).write(self.tls_dir, f"client-{CLIENT}")
        for region in REGIONS:
            pki.issue_node(ca, region["name"], region["name"]).write(self.tls_dir, f"node-{region['name']}")
        pack = self.root / "pack.yaml"
        shutil.copyfile(REPO_ROOT / "deploy" / "policy" / "pack.yaml", pack)
        self.config_path.write_text(yaml.safe_dump(cluster_config(pack.name), sort_keys=False))

    @property
    def daemons(self) -> list[Daemon]:
        return [self.coordinator, *self.nodes.values()]

    def _coordinator(self) -> Daemon:
        # Daemons are killed and started again on their address (restarts, rewinds).
        address = f"127.0.0.1:{free_port()}"
        argv = [
            "-m", "coordinator",
            "--listen", address,
            "--metrics-port", "0",
            "--data-dir", str(self.root / "coordinator"),
            "--cluster-config", str(self.config_path),
            "--log-level", "WARNING",
            "--tls-dir", str(self.tls_dir),
        ]  # fmt: skip
        return Daemon(COORDINATOR, "", address, self.root / "coordinator", argv)

    def _node(self, region: str) -> Daemon:
        address = f"127.0.0.1:{free_port()}"
        data_dir = self.root / "nodes" / region
        argv = [
            "-m", "node",
            "--region", region,
            "--node-id", region,
            "--listen", address,
            "--metrics-port", "-1",
            "--data-dir", str(data_dir),
            "--coordinator", self.coordinator.address,
            "--cluster-config", str(self.config_path),
            "--log-level", "WARNING",
            "--tls-dir", str(self.tls_dir),
        ]  # fmt: skip
        if self.engine == "mongodb":
            argv += ["--engine", "mongodb", "--mongodb-uri", f"mongodb://127.0.0.1:{self.mongodb_port}/"]
        return Daemon(region, region, address, data_dir, argv)

    async def start(self) -> None:
        if self.engine == "mongodb":
            await self.children.start_listening(
                "mongodb",
                ["-m", "secantus", "--host", "127.0.0.1", "--port", str(self.mongodb_port),
                 "--storage-path", str(self.root / "mongodb"), "--log-level", "WARNING",
                 # Journaled writes on disk when acknowledged (README, MongoDB engine).
                 "--sync-on-commit"],
                self.mongodb_port,
            )  # fmt: skip
        for daemon in self.daemons:
            self.router.name(daemon.address, daemon.name)
            daemon.proxy_url = await self.router.listen(daemon.name)
        await self.start_daemon(self.coordinator)
        for node in self.nodes.values():
            await self.start_daemon(node)

    async def start_daemon(self, daemon: Daemon, extra_argv: list[str] | None = None) -> None:
        """Starts the daemon; `extra_argv` are flags for this start only."""
        if daemon.running:
            return
        daemon.incarnation += 1
        ready = COORDINATOR_READY if daemon is self.coordinator else NODE_READY
        # Every channel the daemon opens goes through its port on the router.
        env = {"grpc_proxy": daemon.proxy_url, "no_grpc_proxy": "", **daemon.extra_env}
        argv = [*daemon.argv, *(extra_argv or [])]
        try:
            await self.children.start_daemon(daemon.child_name, argv, ready, env=env)
        except BaseException:
            await self.children.kill(daemon.child_name)  # whatever is left of it
            raise
        daemon.running = True
        daemon.paused = False

    async def kill(self, daemon: Daemon) -> None:
        await self.children.kill(daemon.child_name)
        daemon.running = False
        daemon.paused = False

    def pause(self, daemon: Daemon) -> None:
        if daemon.running and not daemon.paused:
            self.children.send_signal(daemon.child_name, signal.SIGSTOP)
            daemon.paused = True

    def resume(self, daemon: Daemon) -> None:
        if daemon.running and daemon.paused:
            self.children.send_signal(daemon.child_name, signal.SIGCONT)
            daemon.paused = False

    async def restart_with_env(self, daemon: Daemon, env: dict[str, str]) -> None:
        """Kills the daemon and starts it again with `env` (a skewed clock, or none)."""
        await self.kill(daemon)
        daemon.extra_env = env
        await self.start_daemon(daemon)

    async def snapshot(self, daemon: Daemon) -> None:
        """Copies the daemon's data directory while it is stopped (SIGSTOP), so that the copy is
        what a crash at that instant would leave: a consistent SQLite file and its WAL."""
        was_paused = daemon.paused
        self.pause(daemon)
        copy = self.root / "snapshots" / daemon.name
        await asyncio.to_thread(shutil.rmtree, copy, True)
        await asyncio.to_thread(shutil.copytree, daemon.data_dir, copy)
        if not was_paused:
            self.resume(daemon)

    def client_links(self, daemon: Daemon) -> set[tuple[str, str]]:
        return {(client, daemon.name) for client in self.clients}

    async def drain(self, daemon: Daemon, timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """Cuts the clients off the node (the caller heals that), then waits until every peer
        has acknowledged its whole change log and one more heartbeat has told the coordinator
        its position. False when that did not happen within the timeout."""
        self.router.rules.cut.update(self.client_links(daemon))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = await self.status(daemon.region)
            if (
                status is not None
                and len(status.outbound) >= len(self.nodes) - 1
                and all(link.acked_lsn >= status.last_lsn for link in status.outbound)
            ):
                await asyncio.sleep(HEARTBEAT_S * 2)
                return True
            await asyncio.sleep(0.1)
        return False

    def restore_snapshot(self, daemon: Daemon) -> None:
        """Replaces a stopped daemon's data directory with its snapshot."""
        if daemon.running:
            raise RuntimeError(f"{daemon.name} is running; kill it before restoring its store")
        shutil.rmtree(daemon.data_dir)
        shutil.copytree(self.root / "snapshots" / daemon.name, daemon.data_dir)

    async def restore_everything(self) -> None:
        """Resumes what is paused and starts what is down (the heal at the end of a run)."""
        for daemon in self.daemons:
            self.resume(daemon)
        for daemon in self.daemons:
            await self.start_daemon(daemon)

    def direct(self, region: str) -> spb_grpc.StorageNodeServiceStub:
        """A stub that bypasses the router: how the checker reads the final state."""
        if region not in self._direct:
            node = self.nodes[region]
            self._direct[region] = self.dialer.channel(node.address, ExpectedPeer.node(region, region))
        return spb_grpc.StorageNodeServiceStub(self._direct[region])

    async def status(self, region: str) -> spb.GetNodeStatusResponse | None:
        try:
            response: spb.GetNodeStatusResponse = await self.direct(region).GetNodeStatus(
                spb.GetNodeStatusRequest(), timeout=STATUS_DEADLINE_S
            )
        except grpc.aio.AioRpcError:
            return None
        return response

    def cli_args(self) -> list[str]:
        return [
            "--coordinator",
            self.coordinator.address,
            "--tls-dir",
            str(self.tls_dir),
            "--identity",
            CLIENT,
        ]

    async def close(self) -> None:
        for daemon in self.daemons:
            self.resume(daemon)
        await self.children.stop_all()
        await asyncio.gather(*(c.close() for c in self._direct.values()), return_exceptions=True)
        self._direct.clear()
