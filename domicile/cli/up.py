"""`domicile up`: a whole cluster on this machine, one child process per daemon.

The coordinator listens on the base port and region i (in config order) on base port + i;
metrics ports follow the same pattern. Children run in their own process group, so a Ctrl-C
in the terminal reaches only this supervisor, which then stops them in order (nodes, then the
coordinator): SIGTERM, a bounded wait, SIGKILL for any that remain.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from domicile.cli.output import table
from domicile.cli.tiers import (
    S3_CREDENTIALS,
    TierServers,
    backup_config,
    mongodb_server,
    redis_cache_server,
    s3_backup_server,
)
from domicile.client import Client, NodeHealth
from domicile.cluster import ClusterSpec, load_cluster
from domicile.errors import AlreadyExists, DomicileError, InvalidArgument
from domicile.identity import audit_key, pki
from domicile.identity.credentials import Dialer
from domicile.identity.files import PRIVATE_MODE, write_atomically
from domicile.identity.principal import ExpectedPeer, Role
from domicile.identity.tls_files import TlsFiles
from domicile.ports import reserve

_POLL_S = 0.2
# The cluster's context-token key, in the cluster's data directory (see ensure_context_key).
CONTEXT_KEY_FILE = "context.key"
_HEALTH_RPC_S = 1.0
# A child's port opens a moment after it starts: retry connecting at the poll's pace, not with
# gRPC's default back-off, which grows to minutes.
_HEALTH_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 500))


@dataclass(frozen=True)
class ChildSpec:
    name: str
    role: str
    argv: tuple[str, ...]
    address: str
    metrics_url: str
    log_path: Path
    peer: ExpectedPeer | None = None


@dataclass
class Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


class StartupFailed(Exception):
    """The cluster did not come up; the message says which child and where its log is."""


def plan_children(
    cluster: ClusterSpec,
    *,
    config_path: Path,
    data_dir: Path,
    host: str,
    base_port: int,
    metrics_base_port: int,
    log_level: str,
    tls_dir: Path | None,
    python: str = sys.executable,
    node_args: Sequence[str] = (),
    nodes_per_region: int = 1,
    region_args: Mapping[str, Sequence[str]] | None = None,
) -> list[ChildSpec]:
    """The command line of every child. Pure, so that tests can check the layout.

    `node_args`: flags every node gets on top (the tier servers' with --tiers); `region_args`:
    flags the nodes of one region get after those (by region name).
    `nodes_per_region` daemons per region: the first of each region as without it, the others
    after every region's first (their ports follow in the same region order)."""
    if nodes_per_region < 1:
        raise InvalidArgument(f"--nodes-per-region {nodes_per_region}: at least 1")
    count = 1 + nodes_per_region * len(cluster.regions)
    if not cluster.regions:
        raise InvalidArgument(f"cluster config {config_path} defines no regions; at least one is needed")
    for flag, first in (("--base-port", base_port), ("--metrics-base-port", metrics_base_port)):
        if first == 0 and flag == "--metrics-base-port":
            continue
        if not 1 <= first <= 65536 - count:
            raise InvalidArgument(f"{flag} {first}: {count} ports from it must fit in 1..65535")
    logs = data_dir / "logs"
    coordinator = f"{host}:{base_port}"

    def metrics(i: int) -> tuple[str, str]:
        if metrics_base_port == 0:
            return "0", "-"
        port = metrics_base_port + i
        # Served with the daemons' own TLS files, so https unless the cluster is insecure.
        scheme = "https" if tls_dir is not None else "http"
        return str(port), f"{scheme}://{host}:{port}/metrics"

    # Every child gets the same directory; each finds its own files in it by its identity.
    security = ("--tls-dir", str(tls_dir)) if tls_dir is not None else ("--insecure",)
    port_text, url = metrics(0)
    specs = [
        ChildSpec(
            name="coordinator",
            role="coordinator",
            argv=(
                python,
                "-m",
                "coordinator",
                "--listen",
                coordinator,
                "--metrics-port",
                port_text,
                "--data-dir",
                str(data_dir / "coordinator"),
                "--cluster-config",
                str(config_path),
                "--log-level",
                log_level,
                *security,
            ),
            address=coordinator,
            peer=ExpectedPeer.coordinator(),
            metrics_url=url,
            log_path=logs / "coordinator.log",
        )
    ]
    regions = len(cluster.regions)
    for j in range(nodes_per_region):
        for i, region in enumerate(cluster.regions, start=1):
            index = i + j * regions
            port_text, url = metrics(index)
            address = f"{host}:{base_port + index}"
            node_id = region_node_id(region.name, j)
            shared = ("--region-dir", str(data_dir / region.name)) if nodes_per_region > 1 else ()
            specs.append(
                ChildSpec(
                    name=node_id,
                    role=f"node ({region.jurisdiction or region.country or '-'})",
                    argv=(
                        python,
                        "-m",
                        "node",
                        "--region",
                        region.name,
                        "--node-id",
                        node_id,
                        "--listen",
                        address,
                        "--metrics-port",
                        port_text,
                        "--data-dir",
                        str(data_dir / node_id),
                        *shared,
                        "--coordinator",
                        coordinator,
                        "--cluster-config",
                        str(config_path),
                        "--context-key-file",
                        str(data_dir / CONTEXT_KEY_FILE),
                        "--log-level",
                        log_level,
                        *security,
                        *node_args,
                        *(region_args or {}).get(region.name, ()),
                    ),
                    address=address,
                    peer=ExpectedPeer.node(region.name, node_id),
                    metrics_url=url,
                    log_path=logs / f"{node_id}.log",
                )
            )
    return specs


def ensure_context_key(path: Path) -> None:
    """Creates the cluster's context-token key once (32 random bytes, mode 0600); every node of
    the cluster is given the same file, so that a token from one node verifies at all of them."""
    with contextlib.suppress(AlreadyExists):
        write_atomically(path, secrets.token_bytes(32), PRIVATE_MODE, overwrite=False)


# What each tier server is, in the table `domicile up --tiers` prints.
TIER_ROLES = {
    "mongodb": "every region's primary store, a database per region",
    "redis": "every region's read cache, a Redis database per region in region order",
    "s3": "every region's backups, a bucket domicile-backup-REGION per region",
}

DEV_CLUSTER = "domicile"
CLI_IDENTITY = "cli"
PROMETHEUS_IDENTITY = "prometheus"


@dataclass(frozen=True)
class DevPki:
    directory: Path
    # Client name -> roles, in the order they are printed.
    clients: dict[str, tuple[Role, ...]]


def region_node_id(region: str, index: int) -> str:
    """The node id of a region's daemon number index (0: the region's name, as without
    --nodes-per-region; then region-2, region-3, ...)."""
    return region if index == 0 else f"{region}-{index + 1}"


def make_dev_pki(cluster: ClusterSpec, directory: Path, host: str, nodes_per_region: int = 1) -> DevPki:
    """A development CA in `directory` (kept across runs, so certificates already handed out stay
    valid) and fresh certificates for the coordinator, one node per region, the CLI (every client
    role but monitor), Prometheus (monitor: /metrics only) and one app client per namespace owner
    (the role that owns its namespaces' records)."""
    try:
        ca = pki.init_ca(directory, DEV_CLUSTER)
    except AlreadyExists:
        ca = pki.load_ca(directory)
    hosts = sorted({"localhost", "127.0.0.1", host})
    pki.issue_coordinator(ca, hosts=hosts).write(directory, "coordinator")
    for region in cluster.regions:
        for index in range(nodes_per_region):
            node_id = region_node_id(region.name, index)
            stem = f"node-{node_id}"
            signer = audit_key.key_path(directory / f"{stem}.crt")
            # A node that has signed heads before (its data directory beside this one) keeps that
            # key: the coordinator refuses a node's heads under another.
            earlier = directory.parent / node_id / audit_key.DATA_DIR_KEY_FILE
            key = (
                audit_key.load_key(earlier)
                if earlier.exists() and not signer.exists()
                else audit_key.load_or_create(signer)
            )
            issued = pki.issue_node(
                ca, region.name, node_id, hosts=hosts, audit_public_key=audit_key.public_bytes(key)
            )
            issued.write(directory, stem)
    clients: dict[str, tuple[Role, ...]] = {
        CLI_IDENTITY: (Role.APP, Role.DPO, Role.AUDITOR, Role.OPERATOR),
        # What deploy/prometheus/prometheus.yml scrapes /metrics with: it may call no RPC.
        PROMETHEUS_IDENTITY: (Role.MONITOR,),
    }
    for owner in sorted({n.owner for n in cluster.namespaces if n.owner}):
        clients.setdefault(owner, (Role.APP,))
    for name, roles in clients.items():
        pki.issue_client(ca, name, roles).write(directory, f"client-{name}")
    return DevPki(directory, clients)


def busy_ports(host: str, ports: Sequence[int]) -> list[int]:
    """Ports on host that something already listens on (or that cannot be bound)."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            # As a server would: a port whose old connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(port)
    return busy


class StopRequest:
    """Counts SIGINT / SIGTERM: the first asks for a clean stop, a second for an immediate one."""

    def __init__(self) -> None:
        self.count = 0
        self.event = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.event.set()

    def install(self) -> dict[int, Any]:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, self)
        return previous


class Supervisor:
    def __init__(
        self, specs: list[ChildSpec], stop: StopRequest, out: Callable[[str], None], dialer: Dialer
    ) -> None:
        self.dialer = dialer
        self.specs = specs
        self.stop = stop
        self.out = out
        self.children: list[Child] = []

    def start_all(self) -> None:
        """Starts every child. No code of ours runs between fork and exec (the death signal is
        armed by the wrapper after exec): in a process with gRPC's threads, a preexec_fn could
        crash the child before it started."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Each child gets SIGTERM if this process is killed outright, instead of living on as an
        # orphan that holds its ports (see domicile.die_with_parent).
        guard = [sys.executable, "-m", "domicile.die_with_parent", str(os.getpid())]
        for spec in self.specs:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = spec.log_path.open("ab")
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(spec.argv)}\n".encode())
            log.flush()
            try:
                process = subprocess.Popen(
                    [*guard, *spec.argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    process_group=0,
                )
            except OSError as exc:
                log.close()
                raise StartupFailed(f"cannot start {spec.name}: {exc}") from None
            self.children.append(Child(spec, process, log))

    def exited(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def wait_healthy(self, timeout_s: float) -> None:
        """Waits until every child answers the gRPC health check."""
        end = time.monotonic() + timeout_s
        pending = list(self.children)
        # One channel per child for the whole wait (it reconnects by itself): a plaintext dialer
        # warns once per channel, not once per poll.
        channels = {
            c.spec.name: self.dialer.sync_channel(c.spec.address, c.spec.peer, _HEALTH_CHANNEL_OPTIONS)
            for c in pending
        }
        try:
            while pending:
                self._check_running()
                pending = [c for c in pending if not _healthy(channels[c.spec.name])]
                if not pending:
                    return
                if time.monotonic() > end:
                    names = ", ".join(c.spec.name for c in pending)
                    logs = ", ".join(str(c.spec.log_path) for c in pending)
                    raise StartupFailed(f"not healthy after {timeout_s:g}s: {names}; see {logs}")
                self.stop.event.wait(_POLL_S)
        finally:
            for channel in channels.values():
                channel.close()

    def wait_registered(self, coordinator: str, regions: Sequence[str], timeout_s: float) -> list[str]:
        """Waits until the coordinator reports a node up in every region; returns the ones that
        are not (after the timeout) so the caller can warn."""
        end = time.monotonic() + timeout_s
        missing = list(regions)
        with Client(coordinator, deadline_s=min(2.0, timeout_s), dialer=self.dialer) as client:
            while True:
                self._check_running()
                try:
                    topology = client.topology()
                    up = {n.region for n in topology.nodes if n.health is NodeHealth.UP}
                    missing = [r for r in regions if r not in up]
                except DomicileError:
                    pass
                if not missing or time.monotonic() > end:
                    return missing
                self.stop.event.wait(_POLL_S)

    def _check_running(self) -> None:
        if self.stop.count:
            raise KeyboardInterrupt
        child = self.exited()
        if child is not None:
            raise StartupFailed(_exit_message(child))

    def watch(self) -> Child | None:
        """Blocks until a stop is requested (None) or a child exits (that child)."""
        while not self.stop.count:
            child = self.exited()
            if child is not None:
                return child
            self.stop.event.wait(_POLL_S)
        return None

    def stop_all(self, timeout_s: float) -> None:
        """Nodes first so that they do not spend their last moments chasing the coordinator."""
        nodes = [c for c in self.children if c.spec.role != "coordinator"]
        coordinators = [c for c in self.children if c.spec.role == "coordinator"]
        for group in (nodes, coordinators):
            self._stop_group(group, timeout_s)
        for child in self.children:
            child.log.close()

    def _stop_group(self, group: list[Child], timeout_s: float) -> None:
        running = [c for c in group if c.process.poll() is None]
        signals_seen = self.stop.count
        for child in running:
            _signal(child, signal.SIGTERM)
        end = time.monotonic() + timeout_s
        while any(c.process.poll() is None for c in running):
            # A further Ctrl-C during the stop means: do not wait.
            if time.monotonic() > end or self.stop.count > max(signals_seen, 1):
                break
            time.sleep(0.05)
        for child in running:
            if child.process.poll() is None:
                self.out(f"{child.spec.name} (pid {child.pid}) did not stop in {timeout_s:g}s; killing it")
                _signal(child, signal.SIGKILL)
                child.process.wait()
            self.out(f"stopped {child.spec.name} (exit code {child.process.returncode})")


def _signal(child: Child, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.process.send_signal(sig)


def _exit_message(child: Child) -> str:
    return (
        f"{child.spec.name} (pid {child.pid}) exited with code {child.process.returncode}; "
        f"its log: {child.spec.log_path}"
    )


def _healthy(channel: grpc.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=_HEALTH_RPC_S)
    except grpc.RpcError as exc:
        # A server without the health service still answered: it is up.
        return bool(exc.code() == grpc.StatusCode.UNIMPLEMENTED)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def endpoints_table(children: Sequence[Child]) -> str:
    rows = [
        [c.spec.name, c.spec.role, c.pid, c.spec.address, c.spec.metrics_url, c.spec.log_path]
        for c in children
    ]
    return table(["name", "role", "pid", "grpc", "metrics", "log"], rows)


def tls_text(dev_pki: DevPki | None) -> str:
    if dev_pki is None:
        return (
            "insecure: plaintext, no authentication, no authorization (--insecure); the CLI needs --insecure"
        )
    d = dev_pki.directory
    lines = [
        f"mutual TLS: development CA and certificates in {d}",
        f"  CA           {d / pki.CA_CERT} (more: domicile certs issue --dir {d})",
    ]
    for name, roles in dev_pki.clients.items():
        lines.append(
            f"  client {name:<12} {d / f'client-{name}.crt'} (roles {','.join(r.value for r in roles)})"
        )
    if d == (Path(".domicile") / "tls").resolve():
        lines.append("the CLI run from this directory finds them (identity cli; --identity NAME for another)")
    lines.append(f"elsewhere: export DOMICILE_TLS_DIR={d} (and DOMICILE_IDENTITY=NAME for another client)")
    return "\n".join(lines)


def _say(text: str) -> None:
    print(text, flush=True)


def up(args: argparse.Namespace) -> int:
    config_path = Path(args.config).resolve()
    cluster = load_cluster(config_path)
    data_dir = Path(args.data_dir).resolve()
    per_region = args.nodes_per_region
    if per_region > 1 and not args.tiers:
        raise InvalidArgument(
            f"--nodes-per-region {per_region} needs --tiers: the daemons of a region share its "
            "records in one MongoDB database (an embedded SQLite store has one daemon)"
        )
    dev_pki = None if args.insecure else make_dev_pki(cluster, data_dir / "tls", args.host, per_region)
    tiers = TierServers([])
    if args.tiers:
        # After every daemon's port: the coordinator's, then the regions' daemons.
        first = args.base_port + 1 + per_region * len(cluster.regions)
        # The S3 server's inner servers take free ports: never one of the daemons' numbers,
        # which they bind only later.
        reserve(range(args.base_port, first + 3))
        if args.metrics_base_port:
            reserve(range(args.metrics_base_port, args.metrics_base_port + first - args.base_port))
        s3 = s3_backup_server(data_dir, args.host, first + 2)
        tiers = TierServers(
            [
                mongodb_server(data_dir, args.host, first),
                redis_cache_server(data_dir, args.host, first + 1, cluster.region_names()),
                s3,
            ]
        )
        # Every child reads the config that names the regions' buckets; they sign with the
        # local server's credentials unless the environment has others.
        config_path = backup_config(config_path, f"http://{s3.host}:{s3.port}")
        cluster = load_cluster(config_path)
        for name, value in S3_CREDENTIALS.items():
            os.environ.setdefault(name, value)
    specs = plan_children(
        cluster,
        config_path=config_path,
        data_dir=data_dir,
        host=args.host,
        base_port=args.base_port,
        metrics_base_port=args.metrics_base_port,
        log_level=args.log_level,
        tls_dir=dev_pki.directory if dev_pki else None,
        node_args=tiers.node_args(),
        nodes_per_region=per_region,
        region_args=tiers.region_args(),
    )
    ports = [args.base_port + i for i in range(len(specs))] + [s.port for s in tiers.servers]
    if args.metrics_base_port:
        ports += [args.metrics_base_port + i for i in range(len(specs))]
    busy = busy_ports(args.host, ports)
    if busy:
        raise InvalidArgument(
            f"ports already in use on {args.host}: {', '.join(map(str, busy))}; "
            "stop what uses them or choose --base-port / --metrics-base-port"
        )
    ensure_context_key(data_dir / CONTEXT_KEY_FILE)
    stop = StopRequest()
    previous = stop.install()
    if dev_pki is None:
        dialer = Dialer.plaintext()
    else:
        dialer = Dialer.mutual_tls(TlsFiles.in_directory(dev_pki.directory, f"client-{CLI_IDENTITY}"))
    supervisor = Supervisor(specs, stop, _say, dialer)
    code = 0
    try:
        if tiers.servers:
            _say(f"starting {', '.join(s.name for s in tiers.servers)}; logs in {data_dir / 'logs'}")
            tiers.start(args.startup_timeout)
        _say(f"starting {len(specs)} processes; logs in {data_dir / 'logs'}")
        supervisor.start_all()
        supervisor.wait_healthy(args.startup_timeout)
        missing = supervisor.wait_registered(specs[0].address, cluster.region_names(), args.startup_timeout)
        if missing:
            _say(f"warning: the coordinator does not report these regions up yet: {', '.join(missing)}")
        _say("")
        _say(endpoints_table(supervisor.children))
        for server in tiers.servers:
            _say(
                f"{server.name}: {server.host}:{server.port} ({TIER_ROLES.get(server.name, 'a tier server')})"
            )
        _say("")
        _say(tls_text(dev_pki))
        _say("")
        _say(f"ready: {len(specs)} processes running (data in {data_dir}); press Ctrl-C to stop")
        died = supervisor.watch()
        if died is not None:
            print(f"error: {_exit_message(died)}", file=sys.stderr, flush=True)
            code = 1
    except StartupFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 1
    except DomicileError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        pass
    finally:
        _say("stopping")
        supervisor.stop_all(args.stop_timeout)
        tiers.stop(args.stop_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _say("stopped" if code == 0 else "stopped after a failure")
    return code
