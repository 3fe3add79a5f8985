"""Prometheus metrics of one node. Each Node has its own registry, so that several nodes can run
in one process (the integration tests do)."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from domicile import metrics_endpoint
from domicile.sqlite_checkpoint import DONE, FAILED, WalCheckpointer

# 100 us to 10 s: local calls sit in the sub-millisecond buckets, slow disks in the tens of ms.
RPC_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Resolve 1 ms to 1 s (the one-second promise), with a tail for outages and for the links whose
# sync mode allows them more (a batch or scheduled link: up to a day and its window), so that a
# quantile can pass 1 s plus any allowance the config accepts (sync_modes.INTERVAL_S_MAX).
LAG_BUCKETS_S = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 172800.0,
)  # fmt: skip
# A replicated batch's stages: those of its apply (checks, sealing, audit) take a fraction of a
# millisecond, which the lag buckets, from 1 ms, could not tell apart.
STAGE_BUCKETS_S = (0.0001, 0.00025, 0.0005, *LAG_BUCKETS_S)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# A synchronous write waits a round trip to the nearest in-scope region and its commit: a
# millisecond in a metro, a few hundred across an ocean, the request deadline at most.
SYNC_WAIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A checkpoint between commits copies a few hundred kilobytes: milliseconds, unless the disk stalls.
CHECKPOINT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# Event-loop lag, 0.5 ms to 5 s: a healthy loop sits in the first buckets, a stall that holds
# calls back long enough to matter (a client's streams piling up) in the hundreds of ms.
LOOP_LAG_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


class LagWindow:
    """The most recent lag samples of one link, for p99 in status output (Prometheus has the
    full histogram; this answers `domicile status` without a Prometheus server)."""

    def __init__(self, size: int = 2048) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add_many(self, values_ms: Iterable[float]) -> None:
        with self._lock:
            self._samples.extend(values_ms)

    def quantile(self, q: float) -> float:
        with self._lock:
            data = sorted(self._samples)
        if not data:
            return 0.0
        return data[min(len(data) - 1, int(q * len(data)))]


class NodeMetrics(metrics_endpoint.MetricsServing):
    def __init__(self, node_id: str, region: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_latency = Histogram(
            "domicile_rpc_latency_seconds",
            "Server-side latency of each RPC.",
            ["method"],
            buckets=RPC_BUCKETS_S,
            registry=r,
        )
        self.rpc_errors = Counter(
            "domicile_rpc_errors_total",
            "RPCs that ended with an error status.",
            ["method", "code"],
            registry=r,
        )
        self.authz_refusals = Counter(
            "domicile_authz_refusals_total",
            "Calls refused by authentication or authorization, by action and reason "
            "(unauthenticated, revoked, policy, wrong_peer, context_token, too_large).",
            ["action", "reason"],
            registry=r,
        )
        self.authz_refusals_unaudited = Counter(
            "domicile_authz_refusals_unaudited_total",
            "Refusals beyond the per-principal audit rate, counted here and summarised in one "
            "audit entry per principal and window instead of one entry each.",
            registry=r,
        )
        self.tls_identity_changes_refused = Counter(
            "domicile_tls_identity_changes_refused_total",
            "Replaced TLS files that named another identity than the one the node runs as; the node "
            "kept its certificate (an ERROR in the log names both).",
            registry=r,
        )
        self.authz_policy_rejected = Counter(
            "domicile_authz_policy_rejected_total",
            "Authorization policy sets received (topology or cluster config) that failed to load; "
            "the node kept enforcing the set it had.",
            registry=r,
        )
        self.replication_lag = Histogram(
            "domicile_replication_lag_seconds",
            "Apply time at the target minus commit HLC time at the source.",
            ["source", "target"],
            buckets=LAG_BUCKETS_S,
            registry=r,
        )
        # Where the lag goes (node.replication.stages): each batch's time in each stage.
        self.replication_stage = Histogram(
            "domicile_replication_stage_seconds",
            "Time a replicated batch spends in each stage: at the source, commit (HLC) to shipped "
            "(ship); at the target, commit to the start of its apply (arrive), the receiver's "
            "checks (check), sealing (seal), waiting for audit entries (audit), the apply commit "
            "(commit).",
            ["link", "stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.replication_backlog = Gauge(
            "domicile_replication_backlog",
            "Source change-log positions not yet acknowledged by the target.",
            ["source", "target"],
            registry=r,
        )
        self.replication_applied = Counter(
            "domicile_replication_applied_total",
            "Mutations received and applied.",
            ["source", "target"],
            registry=r,
        )
        self.replication_duplicates = Counter(
            "domicile_replication_duplicates_total",
            "Mutations received that were already known or superseded.",
            ["source", "target"],
            registry=r,
        )
        self.replication_refused = Counter(
            "domicile_replication_refused_total",
            "Mutations refused because the receiving region may not hold them.",
            ["source", "target"],
            registry=r,
        )
        self.replication_rejected = Counter(
            "domicile_replication_rejected_total",
            "Replicated mutations or batches the receiver's checks refused (origin, limits, context, "
            "clock drift, positions), by reason.",
            ["source", "target", "reason"],
            registry=r,
        )
        self.replication_sent = Counter(
            "domicile_replication_sent_total", "Mutations sent.", ["source", "target"], registry=r
        )
        self.replication_connected = Gauge(
            "domicile_replication_connected",
            "1 while the replication stream is open.",
            ["source", "target"],
            registry=r,
        )
        self.replication_reconnects = Counter(
            "domicile_replication_reconnects_total",
            "Stream (re)connection attempts after a failure.",
            ["source", "target"],
            registry=r,
        )
        # Sync modes (domicile/sync_modes.py): the lag a link's mode expects, which the lag
        # alerts add to the promise, and when it last had nothing left to send.
        self.replication_sync_allowance = Gauge(
            "domicile_replication_sync_allowance_seconds",
            "Lag the link's sync mode expects at most: 0 realtime, the interval for batch, the gap "
            "between windows plus a window for scheduled.",
            ["source", "target"],
            registry=r,
        )
        self.replication_drained = Gauge(
            "domicile_replication_drained_timestamp_seconds",
            "When the link last had nothing left to send to its target (Unix time).",
            ["source", "target"],
            registry=r,
        )
        # Anti-entropy (node.replication.entropy): each round compares this node's digest trees
        # with one peer's and pulls the keys that differ.
        self.entropy_keys_compared = Counter(
            "domicile_antientropy_keys_compared_total",
            "Keys whose digests an anti-entropy round compared (keys of buckets that differ).",
            ["node", "peer", "namespace"],
            registry=r,
        )
        self.entropy_keys_repaired = Counter(
            "domicile_antientropy_keys_repaired_total",
            "Keys whose state an anti-entropy round changed here (merged from the peer).",
            ["node", "peer", "namespace"],
            registry=r,
        )
        self.entropy_rounds = Counter(
            "domicile_antientropy_rounds_total",
            "Anti-entropy rounds with a peer, by outcome (ok, failed).",
            ["node", "peer", "outcome"],
            registry=r,
        )
        self.clock_ahead = Gauge(
            "domicile_clock_ahead_seconds",
            "How far this node's next timestamp is ahead of the coordinator's clock at the last "
            "sample (negative when behind).",
            ["node"],
            registry=r,
        )
        self.clock_refusing_writes = Gauge(
            "domicile_clock_refusing_writes",
            "1 while this node refuses writes because its clock runs further ahead of the "
            "coordinator's than max_clock_drift_ms (peers would refuse its timestamps).",
            ["node"],
            registry=r,
        )
        self.entropy_last_round = Gauge(
            "domicile_antientropy_last_round_timestamp_seconds",
            "When the last anti-entropy round with the peer completed (Unix time).",
            ["node", "peer"],
            registry=r,
        )
        # The backfill after a policy change (node.replication.backfill).
        self.backfill_running = Gauge(
            "domicile_backfill_running", "1 while a backfill after a policy change runs.", registry=r
        )
        self.backfill_pairs_pending = Gauge(
            "domicile_backfill_pairs_pending",
            "Peer and namespace pairs the running backfill has still to compare and pull.",
            registry=r,
        )
        self.backfill_keys = Counter(
            "domicile_backfill_keys_pulled_total",
            "Key states a backfill changed here, pulled from the peer.",
            ["peer", "namespace"],
            registry=r,
        )
        self.backfill_rate = Gauge(
            "domicile_backfill_rate_keys_per_second",
            "The most key states per second a backfill pulls (its configured rate).",
            registry=r,
        )
        self.consistency_keys = Gauge(
            "domicile_consistency_keys",
            "Keys this node or the peer holds in the namespace that both may hold (last comparison).",
            ["node", "peer", "namespace"],
            registry=r,
        )
        self.consistency_divergent = Gauge(
            "domicile_consistency_divergent_keys",
            "Of those, keys on which the two replicas disagree (last comparison, before repair).",
            ["node", "peer", "namespace"],
            registry=r,
        )
        self.consistency_agreement = Gauge(
            "domicile_consistency_agreement_ratio",
            "Share of those keys on which the two replicas agree (1 when there are none).",
            ["node", "peer", "namespace"],
            registry=r,
        )
        self.conflicts = Counter(
            "domicile_conflicts_total",
            "Writes that met a concurrent version (kept as siblings or resolved by lww).",
            ["namespace", "mode"],
            registry=r,
        )
        self.siblings_over_cap = Counter(
            "domicile_siblings_over_cap_total",
            "Replicated writes kept although they left their key with more versions than the "
            "namespace's siblings_max (client writes past it are refused; a peer's is never dropped).",
            ["namespace"],
            registry=r,
        )
        self.sync_ack_timeouts = Counter(
            "domicile_sync_ack_timeouts_total",
            "Writes committed here that fewer regions than min_regions_acked acknowledged in time "
            "(answered UNAVAILABLE).",
            ["namespace"],
            registry=r,
        )
        self.sync_ack_wait = Histogram(
            "domicile_sync_ack_wait_seconds",
            "How long a write to a namespace with min_regions_acked above 1 waited, after its local "
            "commit, for that many regions to hold it (timeouts included).",
            ["namespace"],
            buckets=SYNC_WAIT_BUCKETS_S,
            registry=r,
        )
        self.placement_refused = Counter(
            "domicile_placement_refused_total",
            "Writes refused because this region may not hold the record.",
            ["namespace", "rule"],
            registry=r,
        )
        self.schema_validated = Counter(
            "domicile_schema_validated_total",
            "Written values that passed their namespace's JSON Schema.",
            ["namespace"],
            registry=r,
        )
        self.schema_refused = Counter(
            "domicile_schema_refused_total",
            "Writes refused by their namespace's JSON Schema, by the rule that failed.",
            ["namespace", "rule"],
            registry=r,
        )
        self.quality_score = Gauge(
            "domicile_namespace_quality_score",
            "Mean share of the namespace's declared quality fields present in accepted values "
            "since the node started (1 when none were written).",
            ["namespace"],
            registry=r,
        )
        self.policy_decisions = Counter(
            "domicile_policy_decisions_total",
            "Residency decisions by action (store, replicate, read), result (allow, redact, "
            "refuse) and the rule that decided.",
            ["action", "result", "rule"],
            registry=r,
        )
        self.compliance_violations = Gauge(
            "domicile_compliance_violations",
            "Record copies here that the policy in force does not allow, as of the last scan.",
            registry=r,
        )
        self.compliance_violations_held = Gauge(
            "domicile_compliance_violations_held",
            "Of the compliance violations, the record copies a legal hold covers: a remediation "
            "keeps them until the hold is released.",
            registry=r,
        )
        self.compliance_scanned_versions = Gauge(
            "domicile_compliance_scanned_versions",
            "Live record versions the last compliance scan checked.",
            registry=r,
        )
        self.compliance_scan_time = Gauge(
            "domicile_compliance_last_scan_timestamp_seconds",
            "When the last compliance scan finished (Unix time).",
            registry=r,
        )
        self.audit_entries = Gauge(
            "domicile_audit_entries", "Entries in this region's audit log.", registry=r
        )
        self.audit_exported_size = Gauge(
            "domicile_audit_exported_size",
            "Entries covered by the last signed head the coordinator accepted.",
            registry=r,
        )
        self.audit_exported_time = Gauge(
            "domicile_audit_exported_timestamp_seconds",
            "When the coordinator last accepted a signed head (Unix time).",
            registry=r,
        )
        self.audit_export_refused = Counter(
            "domicile_audit_export_refused_total",
            "Signed heads the coordinator refused (the log was rewritten, truncated or re-keyed).",
            registry=r,
        )
        self.audit_chain_valid = Gauge(
            "domicile_audit_chain_valid",
            "1 when the audit log verified at start-up, 0 when it did not.",
            registry=r,
        )
        self.backup_enabled = Gauge(
            "domicile_backup_enabled",
            "1 when this node ships backups to its region's bucket, 0 when none is configured.",
            registry=r,
        )
        self.backup_last_shipped = Gauge(
            "domicile_backup_last_shipped_timestamp_seconds",
            "When a backup round last left nothing of the change log unshipped (Unix time); its "
            "age is the recovery point.",
            registry=r,
        )
        self.backup_generation_started = Gauge(
            "domicile_backup_generation_started_timestamp_seconds",
            "When the current backup generation's base snapshot began (Unix time).",
            registry=r,
        )
        self.backup_bytes = Counter(
            "domicile_backup_shipped_bytes_total", "Bytes of backup objects stored.", registry=r
        )
        self.backup_objects = Counter(
            "domicile_backup_shipped_objects_total", "Backup objects stored.", registry=r
        )
        # Bounded growth: change-log truncation, snapshot bootstraps, tombstone collection.
        self.changelog_rows = Gauge(
            "domicile_changelog_rows",
            "Change-log entries this node holds (its last position minus where truncation left it).",
            registry=r,
        )
        self.changelog_truncated_lsn = Gauge(
            "domicile_changelog_truncated_lsn",
            "The position through which this node's change log is truncated (acknowledged by every "
            "link and, with a backup, shipped).",
            registry=r,
        )
        self.changelog_truncated = Counter(
            "domicile_changelog_truncated_total", "Change-log entries truncated.", registry=r
        )
        self.changelog_link_released = Gauge(
            "domicile_changelog_link_released",
            "1 while a link's target has acknowledged nothing, with no session open, for "
            "changelog_hold_max_s and the change log is truncated without it (it is bootstrapped "
            "from a snapshot when it returns), else 0.",
            ["source", "target"],
            registry=r,
        )
        self.changelog_hold_releases = Counter(
            "domicile_changelog_hold_releases_total",
            "Times a link stopped holding change-log truncation back because its target acknowledged "
            "nothing, with no session open, for changelog_hold_max_s.",
            ["source", "target"],
            registry=r,
        )
        self.bootstraps = Counter(
            "domicile_replication_bootstraps_total",
            "Snapshot bootstraps of a target behind the truncated log, completed (end: source or target).",
            ["source", "target", "end"],
            registry=r,
        )
        self.bootstrap_keys = Counter(
            "domicile_replication_bootstrap_keys_total",
            "Key states a target received in bootstraps.",
            ["source", "target"],
            registry=r,
        )
        self.bootstrap_pruned = Counter(
            "domicile_replication_bootstrap_pruned_total",
            "Keys whose versions a bootstrapping target dropped because the source had purged them.",
            ["source", "target"],
            registry=r,
        )
        self.tombstones_purged = Counter(
            "domicile_tombstones_purged_total",
            "Key states whose tombstones were purged (older than the horizon, acknowledged everywhere).",
            registry=r,
        )
        self.backup_failures = Counter(
            "domicile_backup_failures_total",
            "Backup rounds that failed (the bucket unreachable or refusing); the next retries.",
            registry=r,
        )
        self.erasures_completed = Counter(
            "domicile_erasures_completed_total",
            "Erasure orders this node carried out (records tombstoned, data keys destroyed).",
            registry=r,
        )
        self.erased_records = Counter(
            "domicile_erased_records_total", "Records erased by erasure orders.", ["namespace"], registry=r
        )
        self.retention_expired = Counter(
            "domicile_retention_expired_total",
            "Records deleted because their retention period ended.",
            ["namespace"],
            registry=r,
        )
        # Counted only off the issuing key, so that the common token costs no metric call.
        self.context_tokens_later_key = Counter(
            "domicile_context_tokens_later_key_total",
            "Context tokens that verified under a key after the first of the context key file, "
            "by the key's position in it (2 to 4); the first key's tokens are not counted.",
            ["position"],
            registry=r,
        )
        self.peer_calls_refused = Counter(
            "domicile_peer_calls_refused_total",
            "Calls refused because their peer already had peer_calls_max calls in flight here.",
            registry=r,
        )
        self.retention_capped = Counter(
            "domicile_retention_capped_total",
            "Retention sweeps that stopped at retention_expire_max deletions (a clock ahead, or a "
            "backlog larger than one sweep).",
            registry=r,
        )
        self.retention_last_sweep = Gauge(
            "domicile_retention_last_sweep_timestamp_seconds",
            "When the last retention sweep ended.",
            registry=r,
        )
        self.records_stored = Gauge("domicile_records_stored", "Keys with a live version.", registry=r)
        self.tombstones_stored = Gauge(
            "domicile_tombstones_stored", "Keys whose versions are all tombstones.", registry=r
        )
        self.last_lsn = Gauge("domicile_changelog_last_lsn", "Highest change-log position.", registry=r)
        self.sqlite_checkpoints = Counter(
            "domicile_sqlite_checkpoints_total",
            "WAL checkpoints made between commits (domicile.sqlite_checkpoint), by SQLite file (store, "
            "audit) and outcome (done, failed).",
            ["file", "outcome"],
            registry=r,
        )
        self.sqlite_checkpoint_seconds = Histogram(
            "domicile_sqlite_checkpoint_seconds",
            "How long each WAL checkpoint made between commits took, by SQLite file.",
            ["file"],
            buckets=CHECKPOINT_BUCKETS_S,
            registry=r,
        )
        self.sqlite_wal_bytes = Gauge(
            "domicile_sqlite_wal_bytes",
            "Size of a SQLite file's write-ahead log (store, audit), read every few seconds.",
            ["file"],
            registry=r,
        )
        self.commit_batch_records = Histogram(
            "domicile_commit_batch_records",
            "Local writes per durable commit (group commit).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.topology_revision = Gauge(
            "domicile_topology_revision", "Topology revision this node acts on.", registry=r
        )
        self.subject_orders_revision = Gauge(
            "domicile_subject_orders_revision",
            "Revision of the erasure orders and legal holds in force this node acts on.",
            registry=r,
        )
        self.coordinator_connected = Gauge(
            "domicile_coordinator_connected", "1 while the topology watch stream is open.", registry=r
        )
        self.event_loop_lag = Gauge(
            "domicile_event_loop_lag_seconds",
            "How late the event loop ran a timer, as of the last check (twice a second).",
            registry=r,
        )
        self.event_loop_lag_sampled = Histogram(
            "domicile_event_loop_lag_sampled_seconds",
            "How late the event loop ran a timer, every check (twenty a second), so that a "
            "stall shows whenever it falls.",
            buckets=LOOP_LAG_BUCKETS_S,
            registry=r,
        )
        self.info = Gauge(
            "domicile_node_info", "Constant 1, labelled with identity.", ["node_id", "region"], registry=r
        )
        self.info.labels(node_id, region).set(1)
        self.cache = CacheMetrics(r)
        self.metrics_refused = metrics_endpoint.refused_counter(r)
        self.lag_windows: dict[tuple[str, str], LagWindow] = {}

    def lag_window(self, source: str, target: str) -> LagWindow:
        key = (source, target)
        window = self.lag_windows.get(key)
        if window is None:
            window = self.lag_windows[key] = LagWindow()
        return window

    def forget_peer(self, peer_id: str, labels: tuple[str, ...] = ("target", "peer")) -> int:
        """Removes every gauge series whose `labels` name `peer_id` (a link stopped, a peer gone
        from the topology): left behind, a gauge keeps its last value for good, and an alert
        on it (a link disconnected, anti-entropy stale) fires on a healthy cluster. Counters
        stay: they only count. Returns how many series went."""
        removed = 0
        for metric in vars(self).values():
            if not isinstance(metric, Gauge):
                continue
            # prometheus_client keeps a labelled metric's children by their label values, in the
            # order of its label names; neither has a public accessor.
            names: tuple[str, ...] = tuple(metric._labelnames)
            at = [i for i, name in enumerate(names) if name in labels]
            if not at:
                continue
            with metric._lock:
                children = [key for key in metric._metrics if any(key[i] == peer_id for i in at)]
            for key in children:
                metric.remove(*key)
                removed += 1
        return removed


def watch_checkpoints(metrics: NodeMetrics, file: str, checkpointer: WalCheckpointer) -> None:
    """Counts the checkpoints `checkpointer` makes between commits under SQLite file `file`."""
    done = metrics.sqlite_checkpoints.labels(file, DONE)
    failed = metrics.sqlite_checkpoints.labels(file, FAILED)
    seconds = metrics.sqlite_checkpoint_seconds.labels(file)

    def heard(outcome: str, took_s: float) -> None:
        (done if outcome == DONE else failed).inc()
        seconds.observe(took_s)

    checkpointer.on_checkpoint = heard


class CacheMetrics:
    """The regional read cache's figures (node/cache/); the cache calls these methods."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.hits = Counter("domicile_cache_hits_total", "Gets answered from the cache.", registry=r)
        self.misses = Counter(
            "domicile_cache_misses_total",
            "Gets the cache did not answer (no entry, or a change not yet in Redis); read from the store.",
            registry=r,
        )
        self.fills_refused = Counter(
            "domicile_cache_fills_refused_total",
            "Fills not stored: stale (a newer change landed first), lease_lost (invalidated, expired "
            "or evicted meanwhile), present (another read filled it).",
            ["reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "domicile_cache_fallbacks_total",
            "Gets read from the store because the cache failed (error, timeout, corrupt), was known "
            "to be unavailable, or (over a shared store) had no recent news of the other nodes' "
            "changes (others_behind).",
            ["reason"],
            registry=r,
        )
        self.resets = Counter(
            "domicile_cache_resets_total",
            "Times the cache moved to a new generation (an invalidation failed, Redis lost writes, or "
            "the shared store's change stream could not resume: others_lost).",
            ["reason"],
            registry=r,
        )
        self.entry_count = Gauge(
            "domicile_cache_entries", "Keys in the cache's Redis database (DBSIZE).", registry=r
        )

    def hit(self) -> None:
        self.hits.inc()

    def miss(self) -> None:
        self.misses.inc()

    def fill_refused(self, reason: str) -> None:
        self.fills_refused.labels(reason).inc()

    def fallback(self, reason: str) -> None:
        self.fallbacks.labels(reason).inc()

    def entries(self, count: int) -> None:
        self.entry_count.set(count)

    def reset(self, reason: str) -> None:
        self.resets.labels(reason).inc()
