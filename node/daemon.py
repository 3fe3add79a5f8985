"""The node daemon: wires the engine, group commit, services, replication and the coordinator
link together, and owns their start and stop order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health, health_pb2

from domicile import errors
from domicile.authz.authorizer import Authorizer
from domicile.authz.gate import Gate, Reason, Refusal, load_checks
from domicile.authz.loader import policy_set_version
from domicile.authz.operational import OperationalServicesGuard
from domicile.authz.revoked_streams import RevokedStreamsGuard
from domicile.backup.bucket import Bucket
from domicile.backup.residency import check_bucket_location
from domicile.cluster import BackupSpec, ClusterSpec, load_cluster
from domicile.context_tokens import ContextTokens
from domicile.hlc import HybridClock, physical_ms, wall_ms
from domicile.identity import audit_key
from domicile.identity.certificate import load_certificate
from domicile.identity.files import read_file
from domicile.identity.principal import ExpectedPeer
from domicile.identity.transport import daemon_transport
from domicile.loop_lag import SAMPLED_INTERVAL_S, watch_loop_lag
from domicile.model import writer_id
from domicile.quality import schema_from_text
from domicile.retry import Backoff, BackoffPolicy, retry
from domicile.sqlite_checkpoint import WalCheckpointer
from domicile.subjects import HoldRelease, LegalHold, RegionReceipt, SubjectOrders
from domicile.topology import NodeHealth, Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import replication_pb2, storage_node_pb2
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.peer_limits import PeerConcurrency
from domicile.wire.subjects import receipt_to_pb
from domicile.wire.topology import topology_from_pb
from node.api.access import NodeAccess, RefusalAudit
from node.api.limits import MessageLimits
from node.api.read_ahead import GetReadAhead
from node.api.replication import ReplicationServicer
from node.api.server import node_server
from node.api.storage import StorageServicer
from node.backup.shipper import BackupShipper
from node.cache.read_cache import CacheSettings, ReadCache
from node.clock_file import RESERVE_STEP_MS, CeilingStorer, load_ceiling, save_ceiling
from node.clock_guard import ClockGuard
from node.compliance.audit_log import AuditLog, load_or_create_keys
from node.compliance.enforcer import Audit, Enforcer
from node.compliance.head_export import HeadExporter
from node.compliance.remediation import (
    Copy,
    Receipt,
    Remediator,
    plan_withdrawals,
    withdraw_copies,
    withdrawable,
)
from node.compliance.scanner import ScanReport, scan_store
from node.compliance.stats import namespace_counts
from node.config import CACHE_RULE, NodeConfig, redis_url_for_logs, split_host_port
from node.coordinator_link import CoordinatorLink
from node.crypto.keyring import Keyring, load_or_create_kek
from node.crypto.sealing import Sealer
from node.engine.base import StorageEngine, StoreCounts
from node.engine.core import EngineCore
from node.engine.factory import open_engine
from node.engine.group_commit import GroupCommitter
from node.engine.log_tail import LogTail
from node.engine.sqlite import SQLiteBackend
from node.incarnation import read_epoch
from node.keyfiles import load_context_key
from node.lifecycle.erasure import Eraser
from node.lifecycle.orders_store import load_orders, save_orders
from node.lifecycle.released_holds import released_holds
from node.lifecycle.retention import RetentionSweeper, SweepReport
from node.metrics import NodeMetrics, watch_checkpoints
from node.offload import THREADS_DEFAULT, Offload
from node.replication.backfill import Backfill
from node.replication.bootstrap import SnapshotSource, SnapshotTarget, bootstrap_if_behind
from node.replication.digest_tree import DIGESTS_FILE, DigestTrees
from node.replication.entropy import AntiEntropy
from node.replication.inbound import Receiver
from node.replication.manager import ReplicationManager
from node.replication.signal import LogSignal
from node.replication.tombstone_gc import TombstoneCollector
from node.replication.truncation import HoldLimit, Truncator
from node.rewind import StartCheck, check_with_coordinator, reincarnate
from node.service import StorageService
from node.topology_view import TopologyView

if TYPE_CHECKING:
    from node.engine.mongo_changes import RegionChanges

log = logging.getLogger("domicile.node")

# A scan and the audit chain check may run at once; more would only compete for the same disk.
LONG_WORK_THREADS = 2

TOPOLOGY_META = "topology"
# How often health checks that the store answers.
STORE_WATCH_INTERVAL_S = 1.0
# How long a stopping node tries to anchor its audit log's last head at the coordinator.
CLOSING_HEAD_EXPORT_S = 3.0
# The audit action of a change of the authorization policies in force.
AUTHZ_POLICY_CHANGE = "authz_policy_change"
SERVICE_NAMES = (
    storage_node_pb2.DESCRIPTOR.services_by_name["StorageNodeService"].full_name,
    replication_pb2.DESCRIPTOR.services_by_name["ReplicationService"].full_name,
)


class Node:
    def __init__(
        self,
        config: NodeConfig,
        *,
        hlc: HybridClock | None = None,
        rng: random.Random | None = None,
        wall_ms: Callable[[], int] = wall_ms,
    ):
        """`wall_ms` is the clock of retention and erasure times (tests move it years ahead)."""
        self.config = config
        self.wall_ms = wall_ms
        self.clock = hlc or HybridClock()
        self.rng = rng or random.Random()
        self.metrics = NodeMetrics(config.node_id, config.region)
        self.backoff = BackoffPolicy(config.reconnect_delay_s, config.reconnect_delay_max_s)
        self.address = config.listen
        self.metrics_port = 0
        # https://HOST:PORT/metrics (http:// on an insecure node); "" when disabled.
        self.metrics_url = ""
        self._started = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self._running = False
        self.backup: BackupShipper | None = None
        # The backup section the latest topology asked for, and the switch to it under way.
        self._backup_wanted: BackupSpec | None = None
        self._backup_switch: asyncio.Task[None] | None = None
        # The other daemons' changes to the region's database, for the cache (MongoDB engine).
        self.region_changes: RegionChanges | None = None
        self.epoch = 0
        self._clock_refusing = False
        self._start_check: StartCheck | None = None
        self.rewound = False
        # Stores the HLC's next ceiling ahead of need (started with the clock's persistence).
        self.ceiling_storer: CeilingStorer | None = None

    # -- start --------------------------------------------------------------------------------

    def _initial_topology(self) -> Topology:
        """The cached topology, else one from the cluster config. Blocks (store and file reads)."""
        cached = self.engine.get_meta(TOPOLOGY_META)
        if cached:
            topology = topology_from_pb(cpb.Topology.FromString(cached))
            log.info("resuming on cached topology revision %d", topology.revision)
            return topology
        cluster = load_cluster(self.config.cluster_config) if self.config.cluster_config else ClusterSpec()
        return Topology(0, cluster)

    async def start(self) -> None:
        cfg = self.config
        # First, so that missing or bad certificates stop the node before it opens anything.
        self.security, self.dialer = daemon_transport(
            cfg.tls_files(), cfg.insecure, f"node {cfg.node_id}", cfg.tls_stem, Path(cfg.data_dir)
        )
        # Counted once, by the port (the dialer reads the same files and refuses them too).
        self.security.on_identity_refused(self.metrics.tls_identity_changes_refused.inc)
        authorizer, tokens = load_checks(
            self.security.cluster, cfg.authz_policies, cfg.jwks, cfg.token_issuer, cfg.token_audience
        )
        # Every store read, key unwrap, sealing and file access from here on runs in these
        # threads; several nodes may share one event loop (the tests run whole clusters in one).
        self.offload = offload = Offload(THREADS_DEFAULT)
        # Long jobs (compliance scans, the audit chain check) get threads of their own: they must
        # not queue ahead of a Get, and stop() waits for them before it closes what they read.
        self.long_work = Offload(LONG_WORK_THREADS)
        self.signal = LogSignal()
        try:
            # Before the store opens: a certificate that binds no audit-head key, or one the
            # node does not hold, stops the node here (the coordinator would refuse every head
            # it signs).
            bound_signer = await offload.run(self._bound_audit_key)
            # Before the store opens too: a context key file left wrong by a rotation step stops
            # the node here, with nothing to undo.
            context_tokens = await self._context_tokens(offload)
            self.engine = await offload.run(self._open_store)
            # Before the first write: a store copied back from an older copy becomes a new
            # incarnation here, so that it never hands out a dot or position a second time.
            await self._check_rewind()
            initial_topology = await offload.run(self._initial_topology)
            # The backup section comes with the topology (the coordinator sends each node its
            # region's); the one last received is checked before anything is served: a node
            # whose backups would land where its records may not be does not start.
            backup = self._checked_backup(initial_topology)
            self._backup_wanted = initial_topology.backup
            await offload.warm(self.engine.last_lsn)
            # Before anything stamps a time: the clock resumes above every timestamp issued before.
            await offload.run(self._persist_clock)
            self._guard_clock()
        except BaseException:
            await self._abandon_start()
            raise
        # Started after the store's last position, read before the writer starts (nothing else
        # writes), so that senders of targets already caught up read from it at once.
        self.log_tail = LogTail(
            records_max=cfg.limits.log_tail_records_max,
            bytes_max=cfg.limits.log_tail_bytes_max,
            after_lsn=await offload.run(self.engine.last_lsn),
        )
        # Senders are woken only for commits to namespaces their links carry (node.replication.signal).
        self.signal.log_tail = self.log_tail
        try:
            self.cache = await self._open_cache() if cfg.cache_redis_url else None
        except BaseException:
            # A cache in another region's Redis: nothing of this start stays open.
            await self._abandon_start()
            raise
        self.committer = GroupCommitter(
            self.engine,
            self.clock.now,
            stamp_block=self.clock.block,
            batch_records_max=cfg.limits.commit_batch_records_max,
            queue_records_max=cfg.limits.write_queue_records_max,
            queue_bytes_max=cfg.limits.write_queue_bytes_max,
            on_batch=self.metrics.commit_batch_records.observe,
            log_tail=self.log_tail,
            # Before any write or apply is acknowledged, the cache knows its keys changed.
            on_keys_changed=self.cache.changed if self.cache is not None else None,
            # And before the commit, for as long as it runs (node/cache/coherence.py, `changing`).
            on_keys_changing=self.cache.changing if self.cache is not None else None,
            on_keys_settled=self.cache.settled if self.cache is not None else None,
        )
        self.committer.start()
        self.view = TopologyView(initial_topology)
        stored_orders = await offload.run(load_orders, self.engine)
        if stored_orders is not None:
            self.view.adopt_orders(stored_orders)
        backoff = self.backoff
        self.exporter = HeadExporter(
            coordinator=cfg.coordinator,
            dialer=self.dialer,
            metrics=self.metrics,
            backoff=backoff,
            rpc_deadline_s=cfg.limits.rpc_deadline_s,
            rng=random.Random(self.rng.random()),
            # Signed when sent (a few a second), not per audit batch: see _on_audit_grown.
            sign=lambda: self.audit.head(),
            hash_at=lambda seq: offload.run(self.audit.hash_at, seq),
            incarnation=self.epoch,
        )
        signing_key, subject_key = await offload.run(
            load_or_create_keys, Path(cfg.data_dir), cfg.region_directory
        )
        signing_key = bound_signer or signing_key
        self.audit = AuditLog(
            Path(cfg.data_dir) / "audit.sqlite3",
            region=cfg.region,
            node_id=cfg.node_id,
            signing_key=signing_key,
            subject_key=subject_key,
            hlc=self.clock.now,
            on_grown=self._on_audit_grown,
        )
        # Entries the store's commits carried but the audit log lacks (a crash came between the
        # two commits) are appended before anything else is recorded.
        if self.engine.carries_audit:
            self.audit.start(
                self.engine.audit_outbox,
                await offload.run(self.engine.last_lsn),
                received=self.engine.audit_received,
                store_last_received=await offload.run(self.engine.last_audit_received),
            )
        else:
            self.audit.start()
        for file, checkpointer in self._checkpointers():
            watch_checkpoints(self.metrics, file, checkpointer)
        self.engine.audit_settled = lambda: self.audit.carried_through
        self.engine.audit_received_settled = lambda: self.audit.received_through
        self.committer.on_audit = self.audit.carry
        self.committer.audit_room = self.audit.wait_carry_room
        self.metrics.audit_entries.set(self.audit.size)
        self.enforcer = Enforcer(region=cfg.region, view=self.view, metrics=self.metrics, audit=self.audit)
        # Data keys and the key-encryption key live apart from the store, in keys/: a backup of the
        # store must never carry them, or a restore would undo the destruction of erased keys.
        self.keyring = await offload.run(self._open_keyring)
        self.sealer = Sealer(self.keyring, offload)
        self.eraser = Eraser(
            region=cfg.region,
            node_id=cfg.node_id,
            engine=self.engine,
            committer=self.committer,
            keyring=self.keyring,
            audit=self.audit,
            subject_key=subject_key,
            report=self._report_erasure,
            on_committed=self.signal.notify,
            now_ms=self.wall_ms,
            offload=offload,
        )
        await self.eraser.load(restored=self.epoch > 0)
        self.committer.guard = self.eraser.refusal
        self.sweeper = RetentionSweeper(
            node_id=cfg.node_id,
            engine=self.engine,
            committer=self.committer,
            audit=self.audit,
            on_committed=self.signal.notify,
            on_expired=lambda ns, n: self.metrics.retention_expired.labels(ns).inc(n),
            now_ms=self.wall_ms,
            offload=offload,
            expire_max=cfg.retention_expire_max,
            on_capped=self.metrics.retention_capped.inc,
        )
        self._scan_lock = asyncio.Lock()
        self.last_scan: ScanReport | None = None
        self.service = StorageService(
            node_id=cfg.node_id,
            region=cfg.region,
            engine=self.engine,
            committer=self.committer,
            view=self.view,
            enforcer=self.enforcer,
            sealer=self.sealer,
            eraser=self.eraser,
            limits=cfg.limits,
            metrics=self.metrics,
            on_committed=self.signal.notify,
            offload=offload,
            tokens=context_tokens,
            cache=self.cache,
            carry_audit=self.engine.carries_audit,
            clock_guard=self.clock_guard,
        )
        self.receiver = Receiver(
            node_id=cfg.node_id,
            region=cfg.region,
            engine=self.engine,
            committer=self.committer,
            view=self.view,
            enforcer=self.enforcer,
            sealer=self.sealer,
            eraser=self.eraser,
            clock=self.clock,
            metrics=self.metrics,
            offload=offload,
            limits=cfg.limits,
            max_clock_drift_ms=cfg.max_clock_drift_ms,
            # A replicated apply commits its audit entries with it where the engine carries them.
            carry_audit=self.audit.carry_received if self.engine.carries_audit else None,
            carry_room=self.audit.wait_carry_room if self.engine.carries_audit else None,
        )
        # Digest trees of every namespace, kept up to date from the change log and every
        # replicated or repaired apply; a cache rebuilt from the store at each start.
        self.trees = DigestTrees(Path(cfg.data_dir) / DIGESTS_FILE, log_tail=self.log_tail)
        self.receiver.on_applied = self.trees.mark
        self.entropy = AntiEntropy(
            node_id=cfg.node_id,
            region=cfg.region,
            engine=self.engine,
            trees=self.trees,
            receiver=self.receiver,
            view=self.view,
            enforcer=self.enforcer,
            sealer=self.sealer,
            dialer=self.dialer,
            metrics=self.metrics,
            offload=offload,
            long_work=self.long_work,
            rpc_deadline_s=cfg.limits.rpc_deadline_s,
            interval_s=cfg.antientropy_interval_s,
            rng=random.Random(self.rng.random()),
        )
        self.remediator = Remediator(
            node_id=cfg.node_id, region=cfg.region, audit=self.audit, on_withdrawn=self._withdrawn
        )
        # What a loosened policy now lets this region hold is pulled from the peers.
        self.backfill = Backfill(
            node_id=cfg.node_id,
            entropy=self.entropy,
            view=self.view,
            metrics=self.metrics,
            rate_keys_s=cfg.backfill_rate_keys_s,
        )
        self.replication = ReplicationManager(
            node_id=cfg.node_id,
            region=cfg.region,
            engine=self.engine,
            committer=self.committer,
            view=self.view,
            enforcer=self.enforcer,
            sealer=self.sealer,
            metrics=self.metrics,
            limits=cfg.limits,
            signal=self.signal,
            backoff=backoff,
            ack_persist_interval_s=cfg.ack_persist_interval_s,
            dialer=self.dialer,
            rng=random.Random(self.rng.random()),
            offload=offload,
            log_tail=self.log_tail,
            epoch=self.epoch,
            bootstrap=functools.partial(
                bootstrap_if_behind,
                SnapshotSource(
                    node_id=cfg.node_id, engine=self.engine, enforcer=self.enforcer, sealer=self.sealer,
                    offload=offload, metrics=self.metrics,
                ),
            ),
        )  # fmt: skip
        self.bootstrap_target = SnapshotTarget(
            receiver=self.receiver, engine=self.engine, committer=self.committer, view=self.view,
            metrics=self.metrics, offload=offload, now_ms=self.wall_ms, limits=cfg.limits,
            tombstone_horizon_ms=int(cfg.tombstone_gc_horizon_s * 1000),
        )  # fmt: skip

        self.refusal_audit = RefusalAudit(self.metrics, self.audit, lambda: self.view.policy.version)
        self.service.wait_regions = self.replication.wait_regions
        self.gate = Gate(
            cluster=self.security.cluster,
            authorizer=authorizer,
            tokens=tokens,
            on_refusal=self.refusal_audit.record,
            revoked=self.security.revoked,
        )
        # The node's own set (its authz_policies, else the packaged one) is the fallback until a
        # topology carries the cluster's set, and again if a topology carries none.
        self._local_authorizer = authorizer
        self.adopt_authorization(self.view.topology.cluster)
        access = NodeAccess(self.gate, region=cfg.region, view=self.view)
        gate = self.gate

        def too_large(context: grpc.aio.ServicerContext, action: str, message: str) -> None:
            gate.on_refusal(Refusal(action, Reason.TOO_LARGE, gate.identity_of(context), message))

        def too_many(context: grpc.aio.ServicerContext, peer: str, bound: int) -> None:
            self.metrics.peer_calls_refused.inc()

        self.health = health.aio.HealthServicer()
        storage = StorageServicer(
            self.service,
            self.status,
            self.audit,
            self.compliance_scan,
            self.sealer,
            access,
            consistency=self.entropy.check,
            repair=self.entropy.round_with,
            remediate=self.compliance_remediate,
        )
        replication = ReplicationServicer(
            self.receiver, access, self.view, self.entropy, self.bootstrap_target
        )
        server, _ = node_server(
            storage,
            replication,
            self.health,
            SERVICE_NAMES,
            [
                # Outermost: it sends a Get's cache lookup as the request is decoded, and drops
                # it when an inner wrapper refuses the call.
                GetReadAhead(self.service).wrap,
                PeerConcurrency(cfg.peer_calls_max, too_many).wrap,
                OperationalServicesGuard(self.gate).wrap,
                RevokedStreamsGuard(self.gate).wrap,
                MessageLimits(on_too_large=too_large).wrap,
            ],
        )
        # From here on everything the node runs is built: a failure (a port in use, the metrics
        # endpoint) is undone as a stop undoes a running node, so that nothing is left serving.
        try:
            host, port = split_host_port(cfg.listen)
            try:
                bound = self.security.add_port(server, f"{host}:{port}")
            except RuntimeError as exc:
                raise errors.Unavailable(f"cannot listen on {cfg.listen}: {exc}") from None
            if bound == 0:
                raise errors.Unavailable(f"cannot listen on {cfg.listen}")
            self.address = f"{host}:{bound}"
            await server.start()
            self._server = server
            metrics_address = ""
            if cfg.metrics_port != 0:
                # -1 asks for any free port (tests); 0 disables the endpoint.
                try:
                    endpoint = self.metrics.serve(
                        cfg.metrics_host,
                        max(cfg.metrics_port, 0),
                        self.security.material,
                        self.security.revoked,
                    )
                except (OSError, OverflowError) as exc:
                    raise errors.Unavailable(
                        f"cannot serve metrics on {cfg.metrics_host}:{cfg.metrics_port}: {exc}"
                    ) from None
                self.metrics_port = endpoint.port
                metrics_address = f"{cfg.metrics_host}:{self.metrics_port}"
                self.metrics_url = f"{endpoint.scheme}://{metrics_address}/metrics"
            self.metrics_address = metrics_address
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
            await self.replication.start()
            self.link = CoordinatorLink(
                coordinator=cfg.coordinator,
                dialer=self.dialer,
                node_id=cfg.node_id,
                region=cfg.region,
                address=cfg.advertise or self.address,
                metrics_address=metrics_address,
                view=self.view,
                on_topology=self._adopt_topology,
                metrics=self.metrics,
                backoff=backoff,
                rpc_deadline_s=cfg.limits.rpc_deadline_s,
                rng=random.Random(self.rng.random()),
                on_erased=self._adopt_erased,
                epoch=self.epoch,
                last_lsn=lambda: self.log_tail.last_lsn or 0,
                clock_guard=self.clock_guard,
                on_orders=self._adopt_orders,
            )
            self._tasks.append(asyncio.create_task(self.link.run(), name="coordinator-link"))
            self._tasks.append(asyncio.create_task(self._refresh_gauges(), name="gauges"))
            self._tasks.append(asyncio.create_task(self._watch_store(), name="store-watch"))
            self._tasks.append(
                asyncio.create_task(watch_loop_lag(self.metrics.event_loop_lag.set), name="event-loop-lag")
            )
            self._tasks.append(
                asyncio.create_task(
                    watch_loop_lag(
                        self.metrics.event_loop_lag_sampled.observe, interval_s=SAMPLED_INTERVAL_S
                    ),
                    name="event-loop-lag-sampled",
                )
            )
            self._tasks.append(asyncio.create_task(self.exporter.run(), name="audit-head-export"))
            self._tasks.append(asyncio.create_task(self.entropy.run(), name="anti-entropy"))
            self._tasks.append(asyncio.create_task(self.entropy.follow_tail(), name="digest-trees-follow"))
            if self.rewound:
                # The peers hold this node's writes from after the copy it was put back from.
                self.entropy.rounds_now("this store was rewound; pulling back what the peers hold")
            self._tasks.append(asyncio.create_task(self._verify_audit_log(), name="audit-verify"))
            self._tasks.append(asyncio.create_task(self._summarise_refusals(), name="refusal-summaries"))
            self.exporter.offer(await offload.run(self.audit.head))
            if cfg.retention_sweep_interval_s > 0:
                self._tasks.append(asyncio.create_task(self._sweep_loop(), name="retention"))
            self._start_backup(backup)
            self.truncator = self._truncator()
            if cfg.changelog_truncate_interval_s > 0:
                self._tasks.append(asyncio.create_task(self.truncator.run(), name="changelog-truncation"))
            self.eraser.apply(
                self.view.topology.erasures, self.view.topology.cluster, self.view.topology.holds
            )
            self.metrics.topology_revision.set(self.view.revision)
        except BaseException:
            self._running = True
            await self.stop()
            raise
        self._running = True
        log.info("node %s region %s listening on %s", cfg.node_id, cfg.region, self.address)

    def _truncator(self) -> Truncator:
        """Change-log truncation and tombstone collection (node.replication.truncation): up to
        what every link acknowledged and, while a backup runs, what it shipped. The backup
        section may come and go with the topology, so the shipper is looked up at every pass."""
        cfg = self.config

        def shipped() -> int | None:
            shipper = self.backup
            return None if shipper is None else shipper.truncatable_lsn()

        collector = TombstoneCollector(
            engine=self.engine, committer=self.committer, view=self.view, metrics=self.metrics,
            offload=self.offload, horizon_s=cfg.tombstone_gc_horizon_s, now_ms=self.wall_ms,
            on_purged=self.trees.mark,
        )  # fmt: skip
        return Truncator(
            engine=self.engine, committer=self.committer, metrics=self.metrics, offload=self.offload,
            link_acks=self.replication.link_acks, backup_shipped=shipped,
            collector=collector, interval_s=cfg.changelog_truncate_interval_s,
            hold_limit=HoldLimit(cfg.changelog_hold_max_s, self.metrics, cfg.node_id),
            link_connected=self.replication.connected_links, link_opening=self.replication.opening_links,
            before_truncating=self.entropy.follow,
        )  # fmt: skip

    async def _context_tokens(self, offload: Offload) -> ContextTokens:
        """The tokens of the cluster's context keys: the key file's first key issues, every key
        verifies, and a token verified under a later one is counted (the operator removes an old
        key once its count stops growing)."""
        first, *accepted = await offload.run(
            load_context_key, self.config.context_key_file, Path(self.config.data_dir)
        )
        counter = self.metrics.context_tokens_later_key
        if accepted:
            log.info("context key file holds %d keys: the first issues tokens, all verify", 1 + len(accepted))
        return ContextTokens(first, accepted, lambda position: counter.labels(str(position)).inc())

    def _bound_audit_key(self) -> Ed25519PrivateKey | None:
        """The audit-head key the node's certificate binds (domicile/identity/audit_key.py); None
        on an insecure port, where the key in the data directory signs (and is pinned by the
        coordinator on the first head)."""
        files = self.config.tls_files()
        if self.security.cluster is None or files is None:
            return None
        certificate = load_certificate(read_file(files.cert, "certificate"))
        return audit_key.signing_key(
            certificate, files.cert, [Path(self.config.data_dir) / audit_key.DATA_DIR_KEY_FILE]
        )

    async def _abandon_start(self) -> None:
        """Undoes the start up to the store: a node that failed to start leaves no threads and
        no open store behind (a supervisor may start another in the same process)."""
        await asyncio.to_thread(self.offload.close)
        await asyncio.to_thread(self.long_work.close)
        engine = getattr(self, "engine", None)
        if engine is not None:
            await asyncio.to_thread(engine.close)

    def _checked_backup(self, topology: Topology) -> BackupSpec | None:
        """The region's backup bucket the topology carries, after the residency check (which
        raises InvalidArgument naming the rule)."""
        if topology.backup is not None:
            check_bucket_location(topology.cluster, self.config.region, topology.backup)
        return topology.backup

    def _start_backup(self, spec: BackupSpec | None) -> None:
        cfg = self.config
        if spec is not None:
            self.backup = BackupShipper(
                self.engine, Bucket(spec), spec, cfg.node_id, cfg.region, self.metrics,
                interval_s=cfg.backup_interval_s, epoch=self.epoch,
            )  # fmt: skip
            self.backup.start()
            log.info("backing up to bucket %s at %s", spec.bucket, spec.endpoint)
        self.metrics.backup_enabled.set(1 if spec is not None else 0)

    async def _follow_backup(self, topology: Topology) -> None:
        """Follows a change of the backup section: the old shipper stops (its last round ships
        what is pending), and a new one starts on a bucket that passes the residency check. A
        bucket that does not is refused: nothing is shipped there, and the node says so."""
        if topology.backup == self._backup_wanted:
            return
        self._backup_wanted = topology.backup
        try:
            spec = self._checked_backup(topology)
        except errors.InvalidArgument as refused:
            log.error("backup section of topology revision %d REFUSED; backups stop: %s",
                      topology.revision, refused.message)  # fmt: skip
            spec = None
        # In the background, after any switch still under way: the old shipper's last round can
        # take minutes (a snapshot, a slow bucket), and the topology's other changes (erasure
        # orders, holds, policy) must not wait for it.
        self._backup_switch = asyncio.create_task(self._switch_backup(self._backup_switch, spec))

    async def _switch_backup(self, before: asyncio.Task[None] | None, spec: BackupSpec | None) -> None:
        if before is not None:
            with contextlib.suppress(Exception):
                await before
        if self.backup is not None:
            # The old shipper stays self.backup until it has stopped: its last round ships from
            # its position, so the truncator must not cut the log past that position meanwhile;
            # and a new shipper of the same bucket could otherwise resume the generation this
            # one still ships.
            while not await asyncio.to_thread(self.backup.stop):
                log.warning("backup: the previous shipper is still finishing its round; waiting for it")
            self.backup = None
        self._start_backup(spec)

    def _adopt_erased(self, key: bytes, erased: list[tuple[str, str]]) -> None:
        topology = self.view.topology
        self.eraser.adopt_erased(key, erased, topology.cluster, topology.holds)

    def _open_store(self) -> StorageEngine:
        cfg = self.config
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
        # After a restore the store belongs to a new incarnation: its dots and change-log
        # positions are those of writer id node_id.epoch, never reused from an older store.
        self.epoch = read_epoch(cfg.data_dir)
        writer = writer_id(cfg.node_id, self.epoch)
        if self.epoch:
            log.info("node %s runs incarnation %d (writer id %s)", cfg.node_id, self.epoch, writer)
        return open_engine(cfg.engine_settings(), cfg.data_dir, writer, cfg.region)

    def _guard_clock(self) -> None:
        """Starts the writer-side clock bound, from the coordinator's clock as the check at
        start read it: in force from the first write and the first audit entry."""
        cfg = self.config
        self.clock_guard = ClockGuard(
            cfg.max_clock_drift_ms,
            self.clock.last_physical_ms,
            wall=self.clock.wall_ms,
            on_change=self._clock_sampled,
        )
        # While the clock runs too far ahead, nothing it stamps may be kept: a ceiling persisted
        # that far ahead would keep the node refusing writes long after its clock is fixed.
        guard = self.clock_guard
        self.clock.wall_distrusted = guard.distrusted
        check = self._start_check
        if check is not None:
            guard.sample(check.sent_monotonic_s, check.coordinator_unix_ms, check.received_monotonic_s)

    async def _check_rewind(self) -> None:
        cfg = self.config
        if not cfg.coordinator or not cfg.rewind_check:
            return
        last_lsn = await self.offload.run(self.engine.last_lsn)
        checked = await check_with_coordinator(
            self.dialer, cfg.coordinator, cfg.node_id, self.epoch, last_lsn, cfg.limits.rpc_deadline_s
        )
        self._start_check = checked
        if checked is None or last_lsn >= checked.last_lsn_seen:
            return
        if cfg.engine == "mongodb":
            raise errors.FailedPrecondition(
                f"this node's store ends at log position {last_lsn}, but it had reported "
                f"{checked.last_lsn_seen} to the coordinator: the database was put back from an older "
                "copy and would hand out its dots again; restore it as a new incarnation (domicile restore)"
            )
        epoch = max(self.epoch + 1, wall_ms() // 1000)
        log.error(
            "this node's store ends at log position %d, but it had reported %d: it was copied back "
            "from an older copy; becoming incarnation %d",
            last_lsn,
            checked.last_lsn_seen,
            epoch,
        )
        await self.offload.run(
            reincarnate, self.engine, Path(cfg.data_dir), cfg.node_id, cfg.region, epoch, TOPOLOGY_META
        )
        self.engine = await self.offload.run(self._open_store)
        self.rewound = True

    def _persist_clock(self) -> None:
        """Resumes the HLC above the stored ceiling and above the last local write (which covers
        a data directory that lost its ceiling file while the store survived). Blocks."""
        data_dir = Path(self.config.data_dir)
        ceiling = load_ceiling(data_dir)
        last_lsn = self.engine.last_lsn()
        if last_lsn > 0:
            for mutation in self.engine.read_log(last_lsn - 1, 1):
                ceiling = max(ceiling, physical_ms(mutation.version.hlc))
        # A log truncated through its last entry (every link acknowledged it: an idle node's
        # usual state) keeps that entry's HLC as its start.
        ceiling = max(ceiling, physical_ms(self.engine.log_start().hlc))
        if self.rewound:
            # The ceiling file came back with the old copy: the writes the copy lost were stamped
            # up to the lost ceiling, which ran at most one reserve step ahead of the wall clock
            # of the time. Resuming one step ahead of now stays above them, so an lww write made
            # right after the rewind is not ordered before a write it follows.
            ceiling = max(ceiling, self.clock.wall_ms() + RESERVE_STEP_MS)
        # The next step is stored ahead on a thread of its own, so that the timestamp which
        # reaches the ceiling (on the writer thread, or on the event loop for an audit entry or
        # a replicated apply) does not wait for the file's fsyncs, once a second.
        if self.ceiling_storer is None:
            self.ceiling_storer = CeilingStorer()
        self.clock.persist(
            ceiling, lambda ms: save_ceiling(data_dir, ms), RESERVE_STEP_MS, early=self.ceiling_storer.run
        )

    async def _open_cache(self) -> ReadCache:
        """The region's read cache. A Redis that another region claimed is refused; one that
        does not answer yet is used once it does (reads use the store meanwhile)."""
        cfg = self.config
        cache = ReadCache(
            CacheSettings(
                url=cfg.cache_redis_url,
                region=cfg.cache_redis_region,
                ttl_s=cfg.cache_ttl_s,
                deadline_s=cfg.cache_deadline_ms / 1000,
            ),
            node_id=cfg.node_id,
            counters=self.metrics.cache,
            # Other daemons of the region may write the same database.
            shared_store=cfg.engine == "mongodb",
        )
        try:
            claimed = await self.offload.run(cache.check_region)
        except Exception as exc:
            log.warning("the cache's Redis %s does not answer (%s); reads use the store until it does",
                        redis_url_for_logs(cfg.cache_redis_url), exc)  # fmt: skip
            claimed = cfg.region
        if claimed != cfg.region:
            await asyncio.to_thread(cache.close)
            raise errors.FailedPrecondition(
                f"the cache's Redis {redis_url_for_logs(cfg.cache_redis_url)} serves region {claimed}, "
                f"not {cfg.region}; "
                f"rule {CACHE_RULE}: a node caches its records only in a Redis of its own region"
            )
        cache.start()
        if cache.others is not None:
            # Imported here: a node on SQLite never loads the MongoDB driver.
            from node.engine.mongo import MongoEngine
            from node.engine.mongo_changes import RegionChanges, await_for_bound

            assert isinstance(self.engine, MongoEngine)
            self.region_changes = RegionChanges(
                self.engine.mongo, cache.others, await_s=await_for_bound(cache.others.lag_max_s)
            )
            self.region_changes.start()
        return cache

    def _open_keyring(self) -> Keyring:
        # Data keys and the key-encryption key live apart from the store, in keys/: a backup of
        # the store must never carry them, or a restore would undo the destruction of erased keys.
        # The daemons of a region over one database share them (config region_dir): each must
        # open what another sealed.
        key_dir = self.config.region_directory / "keys"
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Keyring(key_dir / "keys.sqlite3", load_or_create_kek(key_dir))

    async def _adopt_topology(self, topology: Topology, raw: bytes) -> None:
        def persist(engine: StorageEngine) -> None:
            engine.put_meta(TOPOLOGY_META, raw)

        await self.committer.run(persist)
        before = self.view.policy.version
        topology_before = self.view.topology
        nodes_before = self.view.topology
        try:
            if self.view.replace(topology):
                self.metrics.topology_revision.set(topology.revision)
                self.replication.apply(topology)
                await self._follow_backup(topology)
                log.info("topology revision %d adopted", topology.revision)
                self.backfill.topology_changed(topology_before, before)
                if self.view.policy.version != before:
                    await self._policy_changed(before)
                self.adopt_authorization(topology.cluster)
                self._relay_for_down_peers(nodes_before, topology)
        finally:
            # Erasure orders do not depend on the policy: carry them out even from a revision
            # this node could not adopt, with the holds and cluster it acts on.
            current = self.view.topology
            self.eraser.apply(current.erasures, current.cluster, current.holds)

    async def _adopt_orders(self, orders: SubjectOrders) -> None:
        """Adopts a complete set of erasure orders and holds (WatchSubjectOrders). The holds
        placed and released are audited first, durably; then the set is stored, so that a
        restart acts on it too, and carried out. A failure or a crash between the two audits
        them again when the set comes again (at least once); storing first lost them."""
        holds_before = self.view.topology.holds
        await asyncio.gather(*self._audit_holds(holds_before, orders.holds, orders.released))
        # A released hold no longer defers the erasures it stopped: noted before the set without
        # it is stored, and carried out by apply() below (and at the next start if need be).
        released, vanished = released_holds(holds_before, orders.holds, orders.released)
        for hold in vanished:
            log.warning(
                "legal hold %s is no longer in force but the orders name no release of it (a "
                "coordinator restored to an earlier point, or more releases since than the orders "
                "carry): what it kept of erased subjects stays until they are erased again",
                hold.hold_id,
            )
        await self.eraser.reinstated(orders.holds)
        await self.eraser.note_released(released)
        await self.committer.run(lambda engine: save_orders(engine, orders))
        self.view.adopt_orders(orders)
        self.metrics.subject_orders_revision.set(orders.revision)
        log.info(
            "subject orders of revision %d adopted: %d erasures, %d holds",
            orders.revision,
            len(orders.erasures),
            len(orders.holds),
        )
        current = self.view.topology
        self.eraser.apply(current.erasures, current.cluster, current.holds)

    def _relay_for_down_peers(self, before: Topology, after: Topology) -> None:
        """Writes a peer shipped to some replicas only before it went down reach the others
        through anti-entropy among the replicas still up. Run at once rather than at the
        interval: the origin cannot ship them again, and until then they live on fewer copies."""
        went_down = [
            node.node_id
            for node in after.nodes
            if node.node_id != self.config.node_id
            and node.health is NodeHealth.DOWN
            and (was := before.node(node.node_id)) is not None
            and was.health is NodeHealth.UP
        ]
        if went_down:
            self.entropy.rounds_now(
                f"{', '.join(went_down)} went down; relaying what only some replicas hold"
            )

    def adopt_authorization(self, cluster: ClusterSpec) -> bool:
        """Enforces the authorization policies `cluster` carries (the node's own set when it
        carries none). A set that fails to load changes nothing: the node keeps enforcing the set
        it has, logs an ERROR and counts it. Returns whether the set in force changed."""
        if not self.gate.enforcing or self._local_authorizer is None:
            return False
        current = self.gate.authorizer
        if not cluster.authz_policies_text:
            wanted = self._local_authorizer
        elif current is not None and current.bundle.version == policy_set_version(
            cluster.authz_policies_text
        ):
            return False
        else:
            try:
                wanted = Authorizer.distributed(
                    cluster.authz_policies_text, cluster.authz_policies_source, self.gate.cluster or ""
                )
            except errors.InvalidArgument as error:
                self.metrics.authz_policy_rejected.inc()
                log.error(
                    "authorization policies %s from %s REFUSED; still enforcing %s: %s",
                    policy_set_version(cluster.authz_policies_text),
                    cluster.authz_policies_source,
                    self.gate.policy_version,
                    error.message,
                )
                return False
        if wanted is current:
            return False
        before = self.gate.policy_version
        self.gate.replace_authorizer(wanted)
        log.info("authorization policies %s in force (were %s)", wanted.version, before)
        try:
            self.audit.record(
                principal="node:" + self.config.node_id,
                action=AUTHZ_POLICY_CHANGE,
                policy_version=wanted.version,
                detail=f"from={before} to={wanted.version} source={wanted.bundle.policies_source}"[:1000],
            )
        except errors.DomicileError as error:
            log.error("authorization policy change to %s not audited: %s", wanted.version, error.message)
        return True

    def _audit_holds(
        self, before: tuple[LegalHold, ...], after: tuple[LegalHold, ...], released: tuple[HoldRelease, ...]
    ) -> list[asyncio.Future[int]]:
        """Every region records the holds placed and released, since they change what it keeps,
        each as the DPO who placed or released it. A release the orders no longer carry (the
        node was away for more than RELEASES_CARRIED of them) is recorded as the coordinator's."""
        old = {h.hold_id: h for h in before}
        new = {h.hold_id: h for h in after}
        releases = {r.hold_id: r for r in released}
        durable: list[asyncio.Future[int]] = []
        for hold_id in sorted(new.keys() - old.keys()):
            hold = new[hold_id]
            entry = self.audit.record(
                principal=hold.placed_by or "coordinator",
                action="hold_placed",
                namespace=hold.namespace,
                key=hold.key,
                subject_id=hold.subject_id,
                detail=hold.describe()[:1000],
            )
            durable.append(entry)
        for hold_id in sorted(old.keys() - new.keys()):
            hold, release = old[hold_id], releases.get(hold_id)
            detail = hold.describe()
            if release is not None and release.reason:
                detail += f"; released: {release.reason}"
            entry = self.audit.record(
                principal=(release.released_by if release is not None else "") or "coordinator",
                action="hold_released",
                namespace=hold.namespace,
                key=hold.key,
                subject_id=hold.subject_id,
                detail=detail[:1000],
            )
            durable.append(entry)
        return durable

    async def _report_erasure(self, request_id: str, receipt: RegionReceipt) -> None:
        """Tells the coordinator, retrying until it answers (the order stays pending until then).
        Also what a release erased (receipt.released_hold_id; the eraser keeps it until then)."""

        async def send() -> None:
            async with self.dialer.channel(self.config.coordinator, ExpectedPeer.coordinator()) as channel:
                request = cpb.ReportErasureRequest(request_id=request_id)
                receipt_to_pb(receipt, request.receipt)
                await cpb_grpc.CoordinatorServiceStub(channel).ReportErasure(
                    request, timeout=self.config.limits.rpc_deadline_s
                )

        try:
            await retry(send, Backoff(self.backoff, self.rng), retriable=_receipt_retriable)
        except grpc.aio.AioRpcError as exc:
            # Retrying the same receipt cannot help; the order stays pending and the next start
            # of the node carries it out again.
            log.error("coordinator refused the receipt of erasure %s: %s", request_id, exc.details())
            return
        if receipt.released_hold_id:
            # The order was counted when it was carried out; the counters count orders' work.
            return
        self.metrics.erasures_completed.inc()
        for namespace, records in receipt.erased:
            self.metrics.erased_records.labels(namespace).inc(records)

    def _clock_sampled(self, ahead_ms: int, refusing: bool) -> None:
        node = self.config.node_id
        self.metrics.clock_ahead.labels(node).set(ahead_ms / 1000)
        was_refusing, self._clock_refusing = self._clock_refusing, refusing
        self.metrics.clock_refusing_writes.labels(node).set(1 if refusing else 0)
        if refusing and not was_refusing:
            log.error(
                "this node's clock is %.1f s ahead of the coordinator's (at most %d ms allowed): "
                "writes and retention sweeps are refused until it is right; fix NTP on this host",
                ahead_ms / 1000,
                self.config.max_clock_drift_ms,
            )
        elif was_refusing and not refusing:
            log.warning("this node's clock is back within %d ms of the coordinator's; writes resume",
                        self.config.max_clock_drift_ms)  # fmt: skip

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_sweep_interval_s)
            if self.clock_guard.refusal() is not None:
                # Expiry is decided by this node's clock: one running ahead would delete early.
                continue
            try:
                await self.sweep_retention()
            except Exception:
                log.exception("retention sweep failed; the next one retries")

    async def sweep_retention(self, now_ms: int | None = None) -> SweepReport:
        topology = self.view.topology
        # The cluster of the sweep's start; the holds are read afresh for every key.
        report = await self.sweeper.sweep(topology.cluster, lambda: self.view.topology.holds, now_ms)
        self.metrics.retention_last_sweep.set(time.time())
        return report

    async def _policy_changed(self, before: str) -> None:
        """Audits the change and scans the store against the new policy: after a tightening the
        scan reports (and the violations gauge shows) what may no longer stay; nothing moves."""
        after = self.view.policy.version
        log.info("residency policy changed from %s to %s; scanning the store", before, after)
        await self.enforcer.event(
            Audit.POLICY_CHANGE, principal="node:" + self.config.node_id, detail=f"from={before} to={after}"
        )
        self._tasks.append(asyncio.create_task(self._scan_after_change(), name="policy-scan"))

    async def _scan_after_change(self) -> None:
        try:
            await self.compliance_scan(0, "node:" + self.config.node_id)
        except Exception:
            log.exception("compliance scan after the policy change failed")

    def _on_audit_grown(self, size: int) -> None:
        self.metrics.audit_entries.set(size)
        self.exporter.offer_grown(size)

    async def _summarise_refusals(self) -> None:
        while True:
            await asyncio.sleep(self.refusal_audit.window_s / 4)
            self.refusal_audit.flush()

    async def _verify_audit_log(self) -> None:
        # Bounded by what was added since the last check at start (a checkpoint), not by the
        # size of the log.
        report, after = await self.long_work.run(self.audit.verify_since_checkpoint)
        self.metrics.audit_chain_valid.set(1 if report.ok else 0)
        if report.ok:
            log.info("audit log verified: %d entries after entry %d", report.entries_checked, after)
            return
        for problem in report.problems:
            log.error("audit log damaged: %s (entry %d): %s", problem.kind, problem.seq, problem.message)

    async def compliance_scan(self, violations_max: int, principal: str) -> ScanReport:
        """Judges every record copy here by the policy in force; one scan at a time."""
        async with self._scan_lock:
            policy, topology = self.view.policy, self.view.topology
            report = await self.long_work.run(
                scan_store,
                self.engine,
                policy,
                topology.cluster,
                self.config.region,
                holds=topology.holds,
                violations_max=violations_max or 1000,
            )
            self.last_scan = report
            self.metrics.compliance_violations.set(report.violations_total)
            self.metrics.compliance_violations_held.set(report.violations_held)
            self.metrics.compliance_scanned_versions.set(report.versions_checked)
            self.metrics.compliance_scan_time.set(time.time())
            await self.enforcer.event(
                Audit.COMPLIANCE_SCAN,
                principal=principal,
                detail=(
                    f"checked={report.versions_checked} violations={report.violations_total} "
                    f"held={report.violations_held}"
                ),
            )
            if report.violations_total:
                log.warning(
                    "compliance scan: %d record copies here are not allowed by policy %s "
                    "(%d of them kept under a legal hold)",
                    report.violations_total,
                    report.policy_version,
                    report.violations_held,
                )
            return report

    async def compliance_remediate(
        self, request_id: str, principal: str, *, remove_last_copies: bool = False
    ) -> Receipt:
        """Removes from this store, and only here, the copies the policy in force does not
        allow here (node/compliance/remediation.py), then scans again; returns the receipt."""
        request_id = Remediator.request_id(request_id)
        async with self._scan_lock:
            policy, topology, region = self.view.policy, self.view.topology, self.config.region
            plan = await self.long_work.run(
                functools.partial(
                    plan_withdrawals,
                    self.engine,
                    policy,
                    topology.cluster,
                    region,
                    remove_last_copies=remove_last_copies,
                    holds=topology.holds,
                )
            )

            def withdraw(copies: Sequence[Copy]) -> Awaitable[list[tuple[str, str, int]]]:
                # Judged again by the policy and the holds in force on the writer thread: a
                # hold placed while the plan ran keeps its copies.
                current = self.view
                check = withdrawable(current.policy, current.topology.cluster, region, current.topology.holds)
                return self.committer.run(
                    lambda engine: withdraw_copies(engine, copies, check),
                    keys=[(c.namespace, c.key) for c in copies],
                )

            receipt = await self.remediator.apply(
                plan,
                request_id=request_id,
                principal=principal,
                policy_version=policy.version,
                withdraw=withdraw,
            )
        log.info(
            "remediation %s by %s removed %d record copies here (%d kept: no region may hold them; "
            "%d kept: under a legal hold)",
            request_id, principal, len(receipt.removed), receipt.kept_last_copies, receipt.kept_held,
        )  # fmt: skip
        receipt.violations_after = (await self.compliance_scan(0, principal)).violations_total
        return receipt

    def _withdrawn(self, keys: list[tuple[str, str]]) -> None:
        self.trees.mark(keys)
        if self.cache is not None:
            self.cache.changed(keys)

    def _store_figures(self) -> tuple[StoreCounts, int]:
        return self.engine.counts(), self.engine.last_lsn()

    def _checkpointers(self) -> list[tuple[str, WalCheckpointer]]:
        """The checkpointers of the node's SQLite files (domicile.sqlite_checkpoint), by their
        metric label: the store's (on the SQLite engine) and the audit log's."""
        found: list[tuple[str, WalCheckpointer | None]] = []
        engine = self.engine
        if isinstance(engine, EngineCore) and isinstance(engine.backend, SQLiteBackend):
            found.append(("store", engine.backend.checkpointer))
        found.append(("audit", self.audit.checkpointer))
        return [(file, checkpointer) for file, checkpointer in found if checkpointer is not None]

    def _wal_sizes(self) -> list[tuple[str, int]]:
        return [(file, checkpointer.wal_bytes()) for file, checkpointer in self._checkpointers()]

    async def _refresh_gauges(self) -> None:
        while True:
            try:
                counts, last = await self.offload.run(self._store_figures)
            except errors.Unavailable:
                pass  # the store watch reports it; the gauges keep their last figures
            else:
                self.metrics.records_stored.set(counts.records)
                self.metrics.tombstones_stored.set(counts.tombstones)
                self.metrics.last_lsn.set(last)
            for file, size in await self.offload.run(self._wal_sizes):
                self.metrics.sqlite_wal_bytes.labels(file).set(size)
            # Writes may start or stop being refused between the coordinator's answers.
            self.clock_guard.recheck()
            await asyncio.sleep(2.0)

    async def _watch_store(self) -> None:
        """Health follows the store: a database server that stops answering makes the node
        NOT_SERVING (its writes fail UNAVAILABLE meanwhile), and SERVING again once it answers."""
        serving = True
        while True:
            await asyncio.sleep(STORE_WATCH_INTERVAL_S)
            try:
                await self.offload.run(self.engine.ping)
                reachable, problem = True, ""
            except errors.Unavailable as error:
                reachable, problem = False, error.message
            if reachable == serving:
                continue
            serving = reachable
            if serving:
                log.warning("node %s: the store answers again; serving", self.config.node_id)
            else:
                log.warning(
                    "node %s: the store is unreachable (%s); not serving", self.config.node_id, problem
                )
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, status)

    # -- status -------------------------------------------------------------------------------

    async def status(self, request: spb.GetNodeStatusRequest | None = None) -> spb.GetNodeStatusResponse:
        counts, last = await self.offload.run(self._store_figures)
        response = spb.GetNodeStatusResponse(
            node_id=self.config.node_id,
            region=self.config.region,
            topology_revision=self.view.revision,
            records_stored=counts.records,
            tombstones_stored=counts.tombstones,
            last_lsn=last,
            conflicts_total=self.service.conflicts_total,
            policy_version=self.view.policy.version,
            uptime_seconds=time.monotonic() - self._started,
            audit_entries=self.audit.size,
            audit_exported_size=self.exporter.exported_size,
            compliance_violations=self.last_scan.violations_total if self.last_scan else 0,
            authz_policy_version=self.gate.policy_version,
        )
        fill = self.backfill.progress
        response.backfill.CopyFrom(
            spb.BackfillStatus(
                state=fill.state,
                topology_revision=fill.topology_revision,
                policy_version=fill.policy_version,
                pairs_total=fill.pairs_total,
                pairs_done=fill.pairs_done,
                keys_pulled=fill.keys_pulled,
                keys_compared=fill.keys_compared,
                rate_keys_per_second=self.backfill.bucket.rate,
                started_at=fill.started_at,
                finished_at=fill.finished_at,
            )
        )
        for target, sender in sorted(self.replication.senders.items()):
            response.outbound.add(
                source_node_id=self.config.node_id,
                target_node_id=target,
                acked_lsn=sender.acked_lsn,
                backlog=max(0, last - sender.acked_lsn),
                connected=sender.connected,
            )
        for source, stats in sorted(self.receiver.stats.items()):
            response.inbound.add(
                source_node_id=source,
                target_node_id=self.config.node_id,
                acked_lsn=stats.position,
                connected=stats.connected,
                lag_ms_p99=self.metrics.lag_window(source, self.config.node_id).quantile(0.99),
                applied_total=stats.applied_total,
            )
        for namespace, figures in sorted(self.service.quality.by_namespace.items()):
            response.namespace_quality.add(
                namespace=namespace,
                validated=figures.validated,
                refused_by_rule=dict(figures.refused_by_rule or {}),
                quality_score=figures.quality_score,
            )
        if request is not None and (request.namespace_stats or request.candidate_schemas):
            candidates = {
                ns: schema_from_text(text, f"candidate schema of namespace {ns}")
                for ns, text in request.candidate_schemas.items()
            }
            found = await self.long_work.run(
                namespace_counts, self.engine, candidates, self.sealer.open_version
            )
            for c in found:
                response.namespace_stats.add(
                    namespace=c.namespace,
                    classification=int(c.classification),  # type: ignore[arg-type]
                    records=c.records,
                    candidate_invalid=c.candidate_invalid,
                )
        return response

    # -- stop ---------------------------------------------------------------------------------

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stops serving, then replication, then the writer. Every step is bounded: a stop that
        hangs on one peer would keep the process (and its port and files) alive."""
        if not self._running:
            return
        self._running = False
        await _bounded("health shutdown", self.health.enter_graceful_shutdown(), 1.0)
        await _cancel_all(self._tasks, "background tasks")
        await _bounded("erasures stop", self.eraser.stop(), 5.0)
        await _bounded("replication stop", self.replication.stop(), 5.0)
        await _bounded("backfill stop", self.backfill.close(), 3.0)
        await _bounded("anti-entropy stop", self.entropy.close(), 3.0)
        if self._server is not None:
            await _bounded("gRPC server stop", self._server.stop(grace_s), grace_s + 2.0)
        if self.cache is not None:
            # No Get runs any more: the cache's lookups on this loop are over.
            await _bounded("cache lookups close", self.cache.close_loop_client(), 2.0)
        # The refusals counted but not yet summarised, while the audit log still takes entries.
        self.refusal_audit.flush(everything=True)
        await _bounded("writer stop", self.committer.stop(), 10.0)
        if self._backup_switch is not None:
            await _bounded("backup switch", self._backup_switch, 15.0)
        if self.backup is not None:
            await _bounded("backup stop", asyncio.to_thread(self.backup.stop), 15.0)
        # A scan or chain check still running reads the store and the audit log: it ends first.
        await _bounded("long jobs", asyncio.to_thread(self.long_work.close), 10.0)
        await _bounded("audit log close", self.audit.close(), 10.0)
        # The entries of the last moments (this stop's among them) are anchored now, not at the
        # next start: a node that is stopped for good (removed) has no next start.
        await _bounded("closing audit head export", self._export_closing_head(), CLOSING_HEAD_EXPORT_S)
        if self.ceiling_storer is not None:
            # Early reservations only: a timestamp past the stored ceiling stores it itself.
            self.ceiling_storer.close()
            self.ceiling_storer = None
        # Reads still running finish before the key ring and the store they use are closed.
        await _bounded("blocking work", asyncio.to_thread(self.offload.close), 5.0)
        await _bounded("stores close", asyncio.to_thread(self._close_stores), 10.0)
        self.metrics.close()
        log.info("node %s stopped", self.config.node_id)

    async def _export_closing_head(self) -> None:
        """Sends the closed audit log's head to the coordinator (the exporter's task has stopped;
        export_last logs what went wrong)."""
        await self.exporter.export_last(self.audit.head())

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _close_stores(self) -> None:
        if self.region_changes is not None:
            self.region_changes.close()
        if self.cache is not None:
            self.cache.close()
        self.trees.close()
        self.keyring.close()
        self.engine.close()


# Answers that say the receipt itself is wrong; any other RPC error is the coordinator being away.
_RECEIPT_REFUSALS = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
)


def _receipt_retriable(exc: Exception) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() not in _RECEIPT_REFUSALS


async def _bounded(what: str, step: Awaitable[object], timeout_s: float) -> None:
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.warning("%s did not finish within %.1f s; continuing shutdown", what, timeout_s)
    except Exception:
        log.exception("%s failed; continuing shutdown", what)


async def _cancel_all(tasks: list[asyncio.Task[None]], what: str, timeout_s: float = 5.0) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            log.warning("%s: task %s did not stop within %.1f s", what, task.get_name(), timeout_s)
