"""The coordinator process: gRPC server, health checker, metrics endpoint and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.addresses import split_host_port
from coordinator.api.servicer import SERVICE_NAME, CoordinatorServicer
from coordinator.audit_heads import AcceptedHead, AuditHeadBook, stored_closed_chains, stored_heads
from coordinator.config import TLS_STEM, CoordinatorConfig, validate
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import Registry
from coordinator.schema_gate import SCHEMAS_DIGEST_META, refuse_invalidating_schemas
from coordinator.state_backup import StateBackup, backup_target
from coordinator.store import CoordinatorStore
from coordinator.subject_desk import SubjectDesk
from coordinator.watch import WatchHub
from domicile.authz.authorizer import Authorizer
from domicile.authz.gate import Gate, Refusal, load_checks
from domicile.authz.operational import OperationalServicesGuard
from domicile.authz.revoked_streams import RevokedStreamsGuard
from domicile.backup.residency import check_bucket_location
from domicile.cluster import ClusterSpec, load_cluster
from domicile.errors import DomicileError, FailedPrecondition, InvalidArgument, Unavailable
from domicile.identity.transport import daemon_transport
from domicile.loop_lag import watch_loop_lag
from domicile.policy.select import policy_for_cluster
from domicile.subjects import SubjectOrders
from domicile.topology import NodeHealth, Topology
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.wire.audit import head_to_bytes
from domicile.wire.limits import SERVER_EXCLUSIVE_PORT_OPTIONS, SERVER_KEEPALIVE_OPTIONS
from domicile.wire.peer_limits import PeerConcurrency

log = logging.getLogger(__name__)
# The most calls one peer may have in flight at the coordinator across its connections: a node
# holds a topology watch and a few unary calls; an SDK client, its watch and its lookups.
COORDINATOR_PEER_CALLS_MAX = 256
# How long a node may take to count the stored values a changed schema would make invalid (it
# walks its store).
SCHEMA_CHECK_DEADLINE_S = 300.0


class Coordinator:
    """One coordinator. `clock` (monotonic seconds) drives heartbeat expiry and `wall_clock`
    (Unix seconds) the last-heartbeat times it reports; inject both in tests."""

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        validate(config)
        self.config = config
        self.cluster: ClusterSpec = load_cluster(config.cluster_config)
        if not self.cluster.regions:
            raise InvalidArgument(f"cluster config {config.cluster_config} configures no regions")
        # Refuse to start with a policy pack the nodes could not enforce.
        policy_for_cluster(self.cluster)
        # ... and with authorization policies they could not load (InvalidArgument naming the
        # file, line and column). The coordinator enforces the same set it distributes.
        if self.cluster.authz_policies_text:
            if config.authz_policies:
                raise InvalidArgument(
                    f"two authorization policy sets: cluster config {config.cluster_config} names "
                    f"{self.cluster.authz_policies_source} and --authz-policies names "
                    f"{config.authz_policies}; give one (the cluster config's is distributed to the nodes)"
                )
            Authorizer.distributed(self.cluster.authz_policies_text, self.cluster.authz_policies_source)
        self.heartbeat_interval_ms = (
            self.cluster.heartbeat_interval_ms
            if config.heartbeat_interval_ms is None
            else config.heartbeat_interval_ms
        )
        self.missed_heartbeats_max = (
            self.cluster.missed_heartbeats_max
            if config.missed_heartbeats_max is None
            else config.missed_heartbeats_max
        )
        # Values from the cluster config go through the same range checks as flags.
        validate(
            dataclasses.replace(
                config,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                missed_heartbeats_max=self.missed_heartbeats_max,
            )
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self.metrics = CoordinatorMetrics()
        self._hub: WatchHub[Topology] = WatchHub(
            config.limits.watchers_max, on_count=self.metrics.watchers.set
        )
        # Erasure orders and holds travel on a stream of their own (WatchSubjectOrders).
        self._orders_hub: WatchHub[SubjectOrders] = WatchHub(config.limits.watchers_max)
        self._store: CoordinatorStore | None = None
        self._registry: Registry | None = None
        self._desk: SubjectDesk | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._backup_task: asyncio.Task[None] | None = None
        self.state_backup: StateBackup | None = None
        self._address: str | None = None
        self._metrics_address: str | None = None
        self._metrics_url = ""
        self._stopped = False

    @property
    def address(self) -> str:
        """host:port the gRPC server listens on (the real port when 0 was asked for)."""
        if self._address is None:
            raise FailedPrecondition("the coordinator is not started; call start() first")
        return self._address

    @property
    def metrics_address(self) -> str | None:
        """host:port of /metrics, or None when metrics are disabled (port 0) or not started."""
        return self._metrics_address

    @property
    def metrics_url(self) -> str:
        """https://HOST:PORT/metrics (http:// when insecure); "" when metrics are disabled."""
        return self._metrics_url

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise FailedPrecondition("the coordinator is not started; call start() first")
        return self._registry

    @property
    def desk(self) -> SubjectDesk:
        if self._desk is None:
            raise FailedPrecondition("the coordinator is not started; call start() first")
        return self._desk

    async def start(self) -> None:
        if self._server is not None or self._stopped:
            raise FailedPrecondition("a Coordinator starts once; create a new one to start again")
        host, port = split_host_port(self.config.listen, "listen address")
        limits = self.config.limits
        # First, so that missing or bad certificates stop the coordinator before it opens its store.
        self.security, dialer = daemon_transport(
            self.config.tls_files(),
            self.config.insecure,
            "the coordinator",
            TLS_STEM,
            Path(self.config.data_dir),
        )
        self.security.on_identity_refused(self.metrics.tls_identity_changes_refused.inc)
        cfg = self.config
        # Each node gets its region's backup section with the topology: a bucket where the
        # policy does not allow every record of its region stops the coordinator, not the nodes
        # one by one (they check it again at start and at every change).
        for region in self.cluster.region_names():
            check_bucket_location(self.cluster, region)
        authorizer, tokens = load_checks(
            self.security.cluster, cfg.authz_policies, cfg.jwks, cfg.token_issuer, cfg.token_audience
        )
        if self.security.cluster is not None and self.cluster.authz_policies_text:
            authorizer = Authorizer.distributed(
                self.cluster.authz_policies_text, self.cluster.authz_policies_source, self.security.cluster
            )
        if authorizer is not None:
            log.info("authorization policies %s in force", authorizer.version)
        gate = Gate(
            cluster=self.security.cluster,
            authorizer=authorizer,
            tokens=tokens,
            on_refusal=self._on_refusal,
            revoked=self.security.revoked,
        )
        try:
            self._store = CoordinatorStore(self.config.data_dir)
            # Before anything of this config is published: schemas that would make stored values
            # invalid refuse it (coordinator/schema_gate.py).
            schemas_digest = await refuse_invalidating_schemas(
                self.cluster,
                str(cfg.cluster_config),
                self._store.load().nodes,
                self._store.get_meta(SCHEMAS_DIGEST_META),
                dialer,
                deadline_s=SCHEMA_CHECK_DEADLINE_S,
                allow_unchecked=cfg.allow_unchecked_schemas,
            )
            self._registry = Registry(
                self.cluster,
                self._store,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                missed_heartbeats_max=self.missed_heartbeats_max,
                limits=limits,
                clock=self._clock,
                wall_clock=self._wall_clock,
                publish=self._on_revision,
                on_register=self._on_register,
                publish_orders=self._orders_hub.publish,
                on_remove=self._on_register,
            )
            self._on_revision(self._registry.topology())
            self._store.put_meta(SCHEMAS_DIGEST_META, schemas_digest)
            self._desk = SubjectDesk(
                self.cluster,
                self._store,
                self._registry,
                limits=limits,
                now_ms=self._wall_ms,
                on_change=self._refresh_subject_metrics,
            )
            self._desk.reconcile()
            self._refresh_subject_metrics()
            server = grpc.aio.server(
                options=[
                    ("grpc.max_receive_message_length", limits.request_bytes_max),
                    ("grpc.max_send_message_length", limits.response_bytes_max),
                    ("grpc.max_concurrent_streams", limits.concurrent_rpcs_max),
                    *SERVER_KEEPALIVE_OPTIONS,
                    *SERVER_EXCLUSIVE_PORT_OPTIONS,
                ],
                maximum_concurrent_rpcs=limits.concurrent_rpcs_max,
                interceptors=[
                    PeerConcurrency(
                        COORDINATOR_PEER_CALLS_MAX, lambda c, p, b: self.metrics.peer_calls_refused.inc()
                    ),
                    OperationalServicesGuard(gate),
                    RevokedStreamsGuard(gate),
                ],
            )
            self._server = server
            store = self._store
            self.audit_heads = AuditHeadBook(
                self.cluster,
                stored_heads(store.load_audit_heads()),
                # Rows keyed by node id (the store's column is named region: it held one node each).
                save=lambda a, closes: store.save_audit_head(
                    a.head.node_id,
                    head_to_bytes(a.head),
                    a.accepted_unix_ms,
                    a.incarnation,
                    closes,
                    a.head.region,
                ),
                now_ms=lambda: int(self._wall_clock() * 1000),
                on_accept=self._on_audit_head,
                on_close=self._on_audit_chain_closed,
                closed=stored_closed_chains(store.closed_audit_heads()),
            )
            for accepted in self.audit_heads.all().values():
                self._on_audit_head(accepted)
            # Every region's refusal counter exists from the start, so that a first refusal is
            # an increase that rate() and increase() can see.
            for region in self.cluster.region_names():
                self.metrics.audit_heads_refused.labels(region=region)
                self.metrics.audit_chains_closed.labels(region=region)
            cpb_grpc.add_CoordinatorServiceServicer_to_server(
                CoordinatorServicer(
                    self._registry,
                    self._desk,
                    self._hub,
                    self.metrics,
                    self.audit_heads,
                    gate,
                    limits.response_bytes_max,
                    self._orders_hub,
                ),
                server,
            )
            self._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            for name in ("", SERVICE_NAME):
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
            try:
                bound = self.security.add_port(server, f"{host}:{port}")
            except RuntimeError as exc:
                raise Unavailable(f"cannot listen on {self.config.listen}: {exc}") from None
            if bound == 0:
                raise Unavailable(f"cannot listen on {self.config.listen}: the address is in use or invalid")
            await server.start()
            self._address = f"{host}:{bound}"
            if self.config.metrics_port:
                endpoint = self.metrics.serve(
                    host.strip("[]"), self.config.metrics_port, self.security.material, self.security.revoked
                )
                self._metrics_address = f"{host}:{endpoint.port}"
                self._metrics_url = f"{endpoint.scheme}://{self._metrics_address}/metrics"
            self._health_task = asyncio.create_task(self._health_loop(), name="coordinator-health")
            target = backup_target(self.cluster, self.config.region)
            if target is not None:
                self.state_backup = StateBackup(self._store, target)
                self._backup_task = asyncio.create_task(
                    self.state_backup.run(self.config.state_backup_interval_s),
                    name="coordinator-state-backup",
                )
            self._lag_task = asyncio.create_task(
                watch_loop_lag(self.metrics.event_loop_lag.set), name="coordinator-event-loop-lag"
            )
        except BaseException:
            await self.stop()
            raise
        log.info(
            "coordinator serving %d regions, %d namespaces, %d nodes at revision %d",
            len(self.cluster.regions),
            len(self.cluster.namespaces),
            len(self._registry.topology().nodes),
            self._registry.revision,
        )

    async def check_health_now(self) -> list[str]:
        """Runs one health pass at once; returns the ids of nodes it marked down."""
        down = self.registry.check_health()
        self._refresh_subject_metrics()
        return down

    async def stop(self) -> None:
        """Ends watch streams, drains RPCs for the grace period, saves state. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._health_task, self._lag_task, self._backup_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._hub.close()
        self._orders_hub.close()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._registry is not None:
            self._registry.close()
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_s)
        self.metrics.close()
        if self.state_backup is not None:
            # The last changes go up before the store closes (a crash loses at most an interval).
            try:
                await self.state_backup.ship()
            except (DomicileError, OSError) as error:
                log.warning("last coordinator state backup failed: %s", error)
        if self._store is not None:
            self._store.close()
        log.info("coordinator stopped")

    async def _health_loop(self) -> None:
        interval_s = self.heartbeat_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check_health_now()
            except Exception:
                # A failing disk must not end health checking; the next pass retries.
                log.exception("health check pass failed")

    def _on_register(self, region: str) -> None:
        """After a registration or a removal: the open erasures' regions follow the nodes."""
        if self._desk is not None:
            self._desk.reconcile()

    def _on_refusal(self, refusal: Refusal) -> None:
        # The coordinator keeps no audit trail of its own: the refusal is counted and logged.
        self.metrics.authz_refusals.labels(refusal.action, refusal.reason.value).inc()
        log.warning("refused %s for %s: %s", refusal.action, refusal.identity, refusal.message)

    def _wall_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def _refresh_subject_metrics(self) -> None:
        """Overdue counts change with the clock alone, so the health loop calls this too."""
        if self._desk is None:
            return
        self.metrics.set_subjects(
            {kind.label: n for kind, n in self._desk.open_counts().items()},
            {kind.label: n for kind, n in self._desk.overdue_counts().items()},
            len(self._desk.holds()),
            {kind.label: ms for kind, ms in self._desk.oldest_open_ms().items()},
        )

    def _on_audit_head(self, accepted: AcceptedHead) -> None:
        region = accepted.head.region
        self.metrics.audit_head_size.labels(region=region).set(accepted.head.size)
        self.metrics.audit_head_time.labels(region=region).set(accepted.accepted_unix_ms / 1000.0)

    def _on_audit_chain_closed(self, closed: AcceptedHead, first: AcceptedHead) -> None:
        self.metrics.audit_chains_closed.labels(region=first.head.region).inc()

    def _on_revision(self, topology: Topology) -> None:
        self._hub.publish(topology)
        up = sum(1 for n in topology.nodes if n.health is NodeHealth.UP)
        self.metrics.set_topology(topology.revision, up, len(topology.nodes) - up)
