"""An in-process cluster for integration tests: a real coordinator and real nodes on free
ports, each node optionally behind a TcpProxy so that tests can cut and heal links."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import yaml

from coordinator.audit_heads import AuditHeadBook
from coordinator.config import CoordinatorConfig
from coordinator.daemon import Coordinator
from domicile.causality import CausalContext
from domicile.cli.up import ensure_context_key
from domicile.client import AsyncClient, Client
from domicile.hlc import HybridClock
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.ports import free_port
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from node.config import NodeConfig
from node.daemon import Node
from node.engine.base import Committed, LocalWrite
from tests.support.tcp_proxy import TcpProxy
from tests.support.tls import TESTER, SessionPki, session_pki

REGIONS = [
    {"name": "us-east-1", "country": "US", "jurisdiction": "US"},
    {"name": "eu-west-1", "country": "IE", "jurisdiction": "EU"},
    {"name": "eu-central-1", "country": "DE", "jurisdiction": "EU"},
    {"name": "ap-northeast-1", "country": "JP", "jurisdiction": "JP"},
]
NAMESPACES = [
    {"name": "instruments", "regions": "global", "conflict_mode": "lww", "classification": "public"},
    {"name": "customers_eu", "regions": ["eu-west-1", "eu-central-1"], "classification": "personal"},
    {"name": "prefs_eu", "regions": ["eu-west-1", "eu-central-1"], "conflict_mode": "lww"},
    {"name": "customers_jp", "regions": ["ap-northeast-1"], "classification": "personal"},
]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = "") -> None:
    """Polls `check` until it is true; fails the test naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or check}")
        await asyncio.sleep(0.02)


class LocalCluster:
    def __init__(
        self,
        root: Path,
        regions: list[str],
        *,
        proxies: bool = False,
        pack: dict[str, Any] | None = None,
        namespaces: list[dict[str, Any]] | None = None,
        insecure: bool = False,
        backups: dict[str, dict[str, Any]] | None = None,
        pki: SessionPki | None = None,
    ) -> None:
        """`pki`: a CA of the cluster's own instead of the session's (a test that changes what
        the CA's files say, such as its revocation list). `pack`: a policy pack (parsed YAML, see
        tests/support/packs.py) to enforce on top of the namespace scopes; without it only the
        scopes apply. Every port runs mutual TLS with the session's CA unless `insecure`
        (plaintext, no authentication: a deliberate choice)."""
        self.insecure = insecure
        # region -> its backup settings in the cluster config (endpoint, bucket, bucket_region)
        self.backups = backups or {}
        # Settings every node of this cluster starts with (before start_node's own overrides).
        self.node_overrides: dict[str, Any] = {}
        # Settings of one region's node (after node_overrides), e.g. another storage engine.
        self.region_overrides: dict[str, dict[str, Any]] = {}
        self.coordinator_overrides: dict[str, Any] = {}
        self.pki: SessionPki | None = None if insecure else (pki or session_pki())
        # What the tests' own calls (stub(), client()) dial with: the session's all-roles client.
        self.dialer = Dialer.plaintext() if self.pki is None else self.pki.dialer()
        self.root = root
        self.regions = regions
        self.use_proxies = proxies
        self.namespaces = namespaces or NAMESPACES
        self.config_path = root / "cluster.yaml"
        self.context_key_file = root / "context.key"
        ensure_context_key(self.context_key_file)
        # Cedar policies the cluster config names (set_authz_policies); None: it names none.
        self.authz_policies: str | None = None
        self.write_config(pack)
        self.coordinator: Coordinator | None = None
        self.coordinator_port = free_port()
        self.nodes: dict[str, Node] = {}
        self.ports: dict[str, int] = {region: free_port() for region in regions}
        self.proxies: dict[str, TcpProxy] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def write_config(self, pack: dict[str, Any] | None) -> None:
        """(Re)writes the cluster config; a coordinator started after this distributes it."""
        self._pack = pack
        config: dict[str, Any] = {
            "regions": [
                {**r, "backup": self.backups[r["name"]]} if r["name"] in self.backups else r for r in REGIONS
            ],
            # The tests' client holds the app role; the default policies let an app use the
            # namespaces it owns, so a namespace without an owner is owned by it.
            "namespaces": [{"owner": TESTER, **ns} for ns in self.namespaces],
            # Heartbeats every 100 ms, a node marked down after 2 s without one. Every change of
            # health is a topology revision every node adopts, and a node going down has every
            # other node run anti-entropy rounds at once: on a loaded machine a bound of a few
            # hundred milliseconds marked nodes down and up again many times a test, and the work
            # that set off slowed replication past the tests' waits.
            "coordinator": {"heartbeat_interval_ms": 100, "missed_heartbeats_max": 20},
        }
        if pack is None:
            config["policy_version"] = "test-scope-1"
        else:
            pack_path = self.root / f"pack-{pack['version']}.yaml"
            # libyaml's dumper: the pure-Python one takes tens of ms for the sample pack.
            pack_path.write_text(yaml.dump(pack, Dumper=yaml.CSafeDumper, sort_keys=False))
            config["policy_pack"] = pack_path.name
        if self.authz_policies is not None:
            (self.root / "authz.cedar").write_text(self.authz_policies)
            config["authz_policies"] = "authz.cedar"
        self.config_path.write_text(yaml.dump(config, Dumper=yaml.CSafeDumper))

    def set_authz_policies(self, text: str) -> None:
        """Names a Cedar policy file (with this text) in the cluster config; a coordinator
        started after this distributes it."""
        self.authz_policies = text
        self.write_config(self._pack)

    async def change_policy(self, pack: dict[str, Any]) -> None:
        """Rolls out a new policy pack the way an operator does: new config, coordinator restart;
        waits until every running node enforces it."""
        self.write_config(pack)
        await self.stop_coordinator()
        await self.start_coordinator()

        async def adopted() -> bool:
            return all(n.view.policy.version == pack["version"] for n in self.nodes.values())

        await eventually(adopted, 15.0, f"every node enforcing policy {pack['version']}")

    @property
    def coordinator_address(self) -> str:
        return f"127.0.0.1:{self.coordinator_port}"

    async def start(self) -> LocalCluster:
        await self.start_coordinator()
        for region in self.regions:
            if self.use_proxies:
                proxy = TcpProxy(f"127.0.0.1:{self.ports[region]}")
                await proxy.start()
                self.proxies[region] = proxy
        # All at once, as the nodes of a region's deployment would start: a node's start is
        # mostly waits on its own threads and the coordinator.
        await _all_then_first_error(self.start_node(r) for r in self.regions)
        return self

    async def start_coordinator(self) -> None:
        self.coordinator = Coordinator(
            CoordinatorConfig(
                cluster_config=self.config_path,
                listen=self.coordinator_address,
                metrics_port=0,
                data_dir=self.root / "coordinator",
                shutdown_grace_s=0.2,
                tls_dir=None if self.pki is None else self.pki.coordinator().cert.parent,
                insecure=self.insecure,
                **self.coordinator_overrides,
            )
        )
        await self.coordinator.start()

    async def stop_coordinator(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.stop()
            self.coordinator = None

    def node_config(self, region: str, **overrides: Any) -> NodeConfig:
        values: dict[str, Any] = {
            "region": region,
            "listen": f"127.0.0.1:{self.ports[region]}",
            "metrics_port": 0,
            "data_dir": str(self.root / region),
            "coordinator": self.coordinator_address,
            "cluster_config": str(self.config_path),
            "synchronous": "NORMAL",
            "reconnect_delay_s": 0.02,
            "reconnect_delay_max_s": 0.3,
            "ack_persist_interval_s": 0.1,
            # One cluster key: a context token from one node verifies at every other.
            "context_key_file": str(self.context_key_file),
        }
        if region in self.proxies:
            values["advertise"] = self.proxies[region].address
        values.update(self.node_overrides)
        values.update(self.region_overrides.get(region, {}))
        values.update(overrides)
        if values.get("engine") == "mongodb":
            values.pop("synchronous", None)  # a setting of the SQLite engine
        if self.pki is None:
            values.setdefault("insecure", True)
        elif not any(k in values for k in ("tls_dir", "tls_cert", "insecure")):
            node_id = values.get("node_id") or region
            values["tls_dir"] = str(self.pki.node(region, node_id).cert.parent)
        return NodeConfig(**values)

    async def start_node(self, region: str, *, hlc: HybridClock | None = None, **overrides: Any) -> Node:
        """`hlc`: the node's clock (a test sets its wall time)."""
        node = Node(self.node_config(region, **overrides), hlc=hlc)
        await node.start()
        self.nodes[region] = node
        return node

    async def stop_node(self, region: str) -> None:
        node = self.nodes.pop(region)
        await node.stop(grace_s=0.1)
        channel = self._channels.pop(region, None)
        if channel is not None:
            await channel.close()

    async def start_linked(self, timeout_s: float = 15.0) -> LocalCluster:
        """Starts the cluster and waits until it is linked; stops it again when it does not get
        there, so that a failed fixture leaves no servers running into the next test."""
        await self.start()
        try:
            await self.wait_linked(timeout_s)
        except BaseException:
            await self.stop()
            raise
        return self

    async def wait_linked(self, timeout_s: float = 15.0) -> None:
        """Waits until every node acts on a topology with every running node and its links up."""

        async def ready() -> bool:
            for node in self.nodes.values():
                if len(node.view.topology.nodes) < len(self.nodes):
                    return False
                for link in node.view.topology.outbound(node.config.node_id):
                    target = node.view.topology.node(link.target_node_id)
                    if target is None or target.region not in self.nodes:
                        continue
                    sender = node.replication.senders.get(link.target_node_id)
                    if sender is None or not sender.connected:
                        return False
            return True

        await eventually(ready, timeout_s, "every node linked")

    def stub(self, region: str) -> spb_grpc.StorageNodeServiceStub:
        channel = self._channels.get(region)
        if channel is None:
            address = f"127.0.0.1:{self.ports[region]}"
            channel = self._channels[region] = self.channel(address, ExpectedPeer.node(region, region))
        return spb_grpc.StorageNodeServiceStub(channel)

    def channel(self, address: str, expected: ExpectedPeer | None = None) -> grpc.aio.Channel:
        """A channel of the tests' client (every client role) to a daemon of this cluster."""
        return self.dialer.channel(address, expected)

    def channel_as_node(self, region: str, address: str, node_id: str = "") -> grpc.aio.Channel:
        """A channel that presents the certificate of a node of this cluster: what a node, or an
        attacker holding a node's key, dials with."""
        assert self.pki is not None, "an insecure cluster has no node certificates"
        return Dialer.mutual_tls(self.pki.node(region, node_id or region)).channel(address)

    def audit_heads(self) -> AuditHeadBook:
        """The running coordinator's record of the nodes' signed audit heads."""
        assert self.coordinator is not None, "the coordinator is not running"
        return self.coordinator.audit_heads

    def coordinator_channel(self) -> grpc.aio.Channel:
        return self.channel(self.coordinator_address, ExpectedPeer.coordinator())

    def cli_args(self) -> list[str]:
        """The flags that connect the `domicile` command as the tests' client."""
        if self.pki is None:
            return ["--insecure"]
        return ["--tls-dir", str(self.pki.directory), "--identity", TESTER]

    def client_options(self) -> dict[str, Any]:
        """How an SDK client of the tests connects: Client(addr, **cluster.client_options())."""
        return {"dialer": self.dialer}

    def client(self, **options: Any) -> Client:
        return Client(self.coordinator_address, **{**self.client_options(), **options})

    def async_client(self, **options: Any) -> AsyncClient:
        return AsyncClient(self.coordinator_address, **{**self.client_options(), **options})

    async def put(
        self,
        region: str,
        namespace: str,
        key: str,
        value: bytes,
        context: CausalContext | None = None,
        **fields: Any,
    ) -> spb.PutResponse:
        """`context`: the versions this write supersedes, sent as a context token signed with
        the target node's key (nodes refuse a plain context)."""
        if context is not None:
            fields["context_token"] = self.nodes[region].service.tokens.issue(namespace, key, context)
        request = spb.PutRequest(namespace=namespace, key=key, value=value, **fields)
        response: spb.PutResponse = await self.stub(region).Put(request, timeout=5)
        return response

    async def get(self, region: str, namespace: str, key: str) -> spb.GetResponse:
        response: spb.GetResponse = await self.stub(region).Get(
            spb.GetRequest(namespace=namespace, key=key), timeout=5
        )
        return response

    async def values(self, region: str, namespace: str, key: str) -> set[bytes]:
        response = await self.get(region, namespace, key)
        return {v.value for v in response.versions}

    async def stop(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        # All at once: a node's server waits out its grace for the replication streams its peers
        # hold open, and one node after another made every cluster test wait for each in turn.
        await _all_then_first_error(self.stop_node(r) for r in list(self.nodes))
        for proxy in self.proxies.values():
            await proxy.stop()
        await self.stop_coordinator()


async def _all_then_first_error(steps: Iterable[Awaitable[object]]) -> None:
    """Runs the steps at once and lets every one finish; then raises the first one's error."""
    outcomes = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def answer_late(node: Node, delay_s: float) -> None:
    """Makes `node` commit every write, then hold its answer back for delay_s (past a client's
    deadline, say): the write is made whatever the caller sees."""
    submit = node.committer.submit

    async def late(write: LocalWrite) -> Committed:
        committed = await submit(write)
        await asyncio.sleep(delay_s)
        return committed

    node.committer.submit = late  # type: ignore[method-assign]
