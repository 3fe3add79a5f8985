"""The benchmark's cluster: a cluster YAML in the run's temp dir, a coordinator and node
daemons started as `python -m coordinator` / `python -m node` exactly as an operator would."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from bench.client import RPC_DEADLINE_S, channel
from bench.procs import Children
from bench.stats import Histogram, histogram_from_text
from domicile import metrics_endpoint
from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Role
from domicile.identity.tls_files import TlsFiles
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc

SOLO_REGION = "us-east-1"
SOURCE_REGION = "eu-west-1"
NEAR_REGION = "eu-central-1"
FAR_REGION = "eu-north-1"
SOLO_NAMESPACE = "bench_solo"
PAIR_NAMESPACE = "bench_pair"
FAR_NAMESPACE = "bench_far"
# Acknowledged only once the distant region holds a write too (synchronous durability).
FAR_SYNC_NAMESPACE = "bench_far_sync"
# The same Puts as SOLO_NAMESPACE, into a namespace whose values must follow a 20-field schema.
SCHEMA_NAMESPACE = "bench_schema"
SCHEMA_FILE = "bench-schema.json"
SCHEMA_FIELDS = 20


def twenty_field_schema() -> dict[str, object]:
    """A JSON Schema (Draft 2020-12) of 20 typed, constrained fields, all required: the shape of
    a customer or order record, so that the check does the work a real schema makes it do."""
    properties: dict[str, object] = {}
    for i in range(SCHEMA_FIELDS):
        kind = ("string", "integer", "number", "boolean")[i % 4]
        rule: dict[str, object] = {"type": kind}
        if kind == "string":
            rule.update(minLength=1, maxLength=64, pattern="^[A-Za-z0-9 ._@-]+$")
        elif kind in ("integer", "number"):
            rule.update(minimum=0, maximum=1_000_000)
        properties[f"field_{i:02d}"] = rule
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": sorted(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def twenty_field_value() -> bytes:
    """A value that passes twenty_field_schema()."""
    samples = {"string": "value 1.0@x", "integer": 42, "number": 3.5, "boolean": True}
    schema = twenty_field_schema()
    props = schema["properties"]
    assert isinstance(props, dict)
    return json.dumps({name: samples[rule["type"]] for name, rule in props.items()}).encode()


# The client every figure's calls run as (the load workers too).
CLIENT = "bench"
# Reads the nodes' /metrics (role monitor), as Prometheus does.
SCRAPER = "bench-prometheus"
# The echo server's certificate, a node's of the run's CA: the bench's clients dial it as they dial a node.
ECHO_NODE_ID = "bench-echo"
ECHO_READY = re.compile(r"echo listening on (\S+)")
CLUSTER = {
    "policy_version": "bench-1",
    "regions": [
        {"name": SOLO_REGION, "country": "US", "jurisdiction": "US"},
        {"name": SOURCE_REGION, "country": "IE", "jurisdiction": "EU"},
        {"name": NEAR_REGION, "country": "DE", "jurisdiction": "EU"},
        {"name": FAR_REGION, "country": "SE", "jurisdiction": "EU"},
    ],
    # One namespace per figure, each scoped to the nodes it measures, so that no phase ships
    # records to a node that another phase measures.
    "namespaces": [
        # Owned by the benchmark's client, whose app role then may read and write them.
        {"name": SOLO_NAMESPACE, "regions": [SOLO_REGION], "conflict_mode": "lww", "owner": CLIENT},
        {
            "name": PAIR_NAMESPACE,
            "regions": [SOURCE_REGION, NEAR_REGION],
            "conflict_mode": "lww",
            "owner": CLIENT,
        },
        {
            "name": FAR_NAMESPACE,
            "regions": [SOURCE_REGION, FAR_REGION],
            "conflict_mode": "lww",
            "owner": CLIENT,
        },
        {
            "name": SCHEMA_NAMESPACE,
            "regions": [SOLO_REGION],
            "conflict_mode": "lww",
            "owner": CLIENT,
            "schema": SCHEMA_FILE,
        },
        {
            "name": FAR_SYNC_NAMESPACE,
            "regions": [SOURCE_REGION, FAR_REGION],
            "conflict_mode": "lww",
            "owner": CLIENT,
            "min_regions_acked": 2,
        },
    ],
    "coordinator": {"heartbeat_interval_ms": 500, "missed_heartbeats_max": 6},
}

COORDINATOR_READY = re.compile(r"coordinator listening on (\S+) metrics (\S+)")
NODE_READY = re.compile(r"node (\S+) region (\S+) listening on (\S+) metrics (\S+)")
LAG_METRIC = "domicile_replication_lag_seconds"
BATCH_METRIC = "domicile_commit_batch_records"
SCRAPE_TIMEOUT_S = 5.0


@dataclass
class NodeHandle:
    node_id: str
    region: str
    address: str  # where clients reach the node directly
    metrics_url: str
    data_dir: Path
    channel: grpc.aio.Channel
    # The client certificate its https /metrics is read with (role monitor); None for http.
    scraper: TlsFiles | None = None

    @property
    def stub(self) -> spb_grpc.StorageNodeServiceStub:
        return spb_grpc.StorageNodeServiceStub(self.channel)

    async def status(self) -> spb.GetNodeStatusResponse:
        response: spb.GetNodeStatusResponse = await self.stub.GetNodeStatus(
            spb.GetNodeStatusRequest(), timeout=RPC_DEADLINE_S
        )
        return response

    async def scrape(self) -> str:
        return await asyncio.to_thread(
            metrics_endpoint.scrape, self.metrics_url, self.scraper, SCRAPE_TIMEOUT_S
        )

    async def histogram(self, name: str, labels: dict[str, str]) -> Histogram | None:
        return histogram_from_text(await self.scrape(), name, labels)


class BenchCluster:
    """Every daemon runs mutual TLS, as deployed, with a CA made for the run in root/tls; a node
    started with `plaintext=True` is the comparison that prices it."""

    def __init__(self, root: Path, children: Children) -> None:
        self.root = root
        self.children = children
        self.config_path = root / "cluster.yaml"
        (root / SCHEMA_FILE).write_text(json.dumps(twenty_field_schema()))
        self.config_path.write_text(yaml.safe_dump(CLUSTER, sort_keys=False))
        self.coordinator_address = ""
        self.nodes: dict[str, NodeHandle] = {}
        self.tls_dir = root / "tls"
        self._ca = pki.init_ca(self.tls_dir, "domicile")
        pki.issue_coordinator(self._ca).write(self.tls_dir, "coordinator")
        pki.issue_client(self._ca, CLIENT, (Role.APP, Role.OPERATOR)).write(self.tls_dir, f"client-{CLIENT}")
        self.dialer = Dialer.mutual_tls(TlsFiles.in_directory(self.tls_dir, f"client-{CLIENT}"))
        self.plain_dialer = Dialer.plaintext()
        pki.issue_client(self._ca, SCRAPER, (Role.MONITOR,)).write(self.tls_dir, f"client-{SCRAPER}")
        self.scraper = TlsFiles.in_directory(self.tls_dir, f"client-{SCRAPER}")

    def node_channel(self, node: NodeHandle, client: str, roles: tuple[Role, ...]) -> grpc.aio.Channel:
        """A channel to `node` as another client of the run's CA, with `roles`."""
        pki.issue_client(self._ca, client, roles).write(self.tls_dir, f"client-{client}")
        dialer = Dialer.mutual_tls(TlsFiles.in_directory(self.tls_dir, f"client-{client}"))
        return channel(node.address, dialer, ExpectedPeer.node(node.region, node.node_id))

    def server_tls_args(self, node_id: str) -> list[str]:
        """The `--tls-dir DIR --tls-stem STEM` of a bench helper server (the echo server, the
        synchronous-Put floor) that serves mutual TLS as a node does: a node's certificate of the
        run's CA, for `node_id` of SOLO_REGION. Its client dials it with `dialer`."""
        pki.issue_node(self._ca, SOLO_REGION, node_id).write(self.tls_dir, f"node-{node_id}")
        return ["--tls-dir", str(self.tls_dir), "--tls-stem", f"node-{node_id}"]

    async def start_echo(self, name: str, *, plaintext: bool = False) -> str:
        """The bare echo server (bench.echo_server), child `name`; its address. Mutual TLS with a
        node's certificate, the baseline of a node serving mutual TLS; `plaintext` for the
        baseline of an `--insecure` node. Dial it with `dialer` or `plain_dialer` to match."""
        security = [] if plaintext else self.server_tls_args(ECHO_NODE_ID)
        match = await self.children.start_daemon(name, ["-m", "bench.echo_server", *security], ECHO_READY)
        return match.group(1)

    async def start_coordinator(self, *, plaintext: bool = False) -> None:
        """`plaintext`: for a run whose nodes are all plaintext (a node started with
        `plaintext=True` speaks plaintext to the coordinator too, and could not reach a mutual-TLS
        one: it would retry its link all through the run, work a deployed node does not do)."""
        security = ["--insecure"] if plaintext else ["--tls-dir", str(self.tls_dir)]
        match = await self.children.start_daemon(
            "coordinator",
            [
                "-m",
                "coordinator",
                "--listen",
                "127.0.0.1:0",
                "--metrics-port",
                "0",
                "--data-dir",
                str(self.root / "coordinator"),
                "--cluster-config",
                str(self.config_path),
                "--log-level",
                "WARNING",
                *security,
            ],
            COORDINATOR_READY,
        )
        self.coordinator_address = match.group(1)

    async def start_node(
        self,
        region: str,
        *,
        synchronous: str = "FULL",
        listen_port: int = 0,
        advertise: str = "",
        node_id: str = "",
        plaintext: bool = False,
        mongodb: tuple[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> NodeHandle:
        """`mongodb`: (URI, database) to run the node on the MongoDB engine instead of SQLite."""
        node_id = node_id or region
        data_dir = self.root / node_id
        if plaintext:
            security = ["--insecure"]
        else:
            pki.issue_node(self._ca, region, node_id).write(self.tls_dir, f"node-{node_id}")
            security = ["--tls-dir", str(self.tls_dir)]
        argv = [
            "-m",
            "node",
            "--region",
            region,
            "--node-id",
            node_id,
            "--listen",
            f"127.0.0.1:{listen_port}",
            "--metrics-port",
            "-1",
            "--data-dir",
            str(data_dir),
            "--coordinator",
            self.coordinator_address,
            "--cluster-config",
            str(self.config_path),
            *(
                ["--synchronous", synchronous]
                if mongodb is None
                else ["--engine", "mongodb", "--mongodb-uri", mongodb[0], "--mongodb-database", mongodb[1]]
            ),
            "--log-level",
            "WARNING",
            *security,
            *extra_args,
        ]
        if advertise:
            argv += ["--advertise", advertise]
        match = await self.children.start_daemon(f"node-{node_id}", argv, NODE_READY)
        node_id, _, address, metrics_url = match.groups()
        if not metrics_url.startswith("http"):
            raise RuntimeError(f"node {node_id} reports no metrics endpoint ({metrics_url})")
        if plaintext:
            node_channel = channel(address, self.plain_dialer)
        else:
            node_channel = channel(address, self.dialer, ExpectedPeer.node(region, node_id))
        scraper = self.scraper if metrics_url.startswith("https://") else None
        handle = NodeHandle(node_id, region, address, metrics_url, data_dir, node_channel, scraper)
        self.nodes[node_id] = handle
        return handle

    async def stop_node(self, node_id: str) -> None:
        handle = self.nodes.pop(node_id, None)
        if handle is not None:
            await handle.channel.close()
        await self.children.stop(f"node-{node_id}")

    async def close(self) -> None:
        for handle in self.nodes.values():
            await handle.channel.close()
        self.nodes.clear()


async def wait_linked(source: NodeHandle, target: NodeHandle, timeout_s: float = 30.0) -> None:
    """Until the source's outbound link to the target is connected."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await source.status()
        if any(link.target_node_id == target.node_id and link.connected for link in status.outbound):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{source.node_id} did not link to {target.node_id} within {timeout_s:.0f} s "
                f"(outbound links: {[(x.target_node_id, x.connected) for x in status.outbound]})"
            )
        await asyncio.sleep(0.05)


async def wait_caught_up(source: NodeHandle, target: NodeHandle, timeout_s: float = 60.0) -> None:
    """Until the target has acknowledged everything in the source's change log."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await source.status()
        link = next((x for x in status.outbound if x.target_node_id == target.node_id), None)
        if link is not None and link.acked_lsn >= status.last_lsn:
            return
        if time.monotonic() > deadline:
            backlog = "no link" if link is None else f"backlog {status.last_lsn - link.acked_lsn}"
            raise RuntimeError(
                f"{target.node_id} did not catch up with {source.node_id} "
                f"within {timeout_s:.0f} s ({backlog})"
            )
        await asyncio.sleep(0.05)


async def inbound_lag_p99_ms(target: NodeHandle, source: NodeHandle) -> float:
    status = await target.status()
    link = next((x for x in status.inbound if x.source_node_id == source.node_id), None)
    if link is None:
        raise RuntimeError(f"{target.node_id} reports no inbound link from {source.node_id}")
    return float(link.lag_ms_p99)
