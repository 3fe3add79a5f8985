"""Prometheus metrics of one coordinator, in a registry of its own so that several coordinators
can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from domicile import metrics_endpoint
from domicile.topology import NodeHealth

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class CoordinatorMetrics(metrics_endpoint.MetricsServing):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics_refused = metrics_endpoint.refused_counter(self.registry)
        self.rpc_latency = Histogram(
            "domicile_coordinator_rpc_duration_seconds",
            "Time to serve a unary CoordinatorService RPC, by method and status code",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.nodes = Gauge(
            "domicile_coordinator_nodes",
            "Registered nodes by health",
            ["health"],
            registry=self.registry,
        )
        self.revision = Gauge(
            "domicile_coordinator_topology_revision",
            "Current topology revision",
            registry=self.registry,
        )
        self.watchers = Gauge(
            "domicile_coordinator_watchers",
            "Open WatchTopology streams",
            registry=self.registry,
        )
        self.audit_head_size = Gauge(
            "domicile_coordinator_audit_head_size",
            "Entries covered by the last signed audit head accepted from each region",
            ["region"],
            registry=self.registry,
        )
        self.audit_head_time = Gauge(
            "domicile_coordinator_audit_head_timestamp_seconds",
            "When the last signed audit head of each region was accepted (Unix time)",
            ["region"],
            registry=self.registry,
        )
        self.peer_calls_refused = Counter(
            "domicile_coordinator_peer_calls_refused_total",
            "Calls refused because their peer already had the most calls in flight one peer may have.",
            registry=self.registry,
        )
        self.tls_identity_changes_refused = Counter(
            "domicile_coordinator_tls_identity_changes_refused_total",
            "Replaced TLS files that named another identity than the coordinator's; it kept its certificate",
            registry=self.registry,
        )
        self.authz_refusals = Counter(
            "domicile_coordinator_authz_refusals_total",
            "Calls refused by authentication or authorization, by action and reason "
            "(unauthenticated, revoked, policy, wrong_peer)",
            ["action", "reason"],
            registry=self.registry,
        )
        self.audit_heads_refused = Counter(
            "domicile_coordinator_audit_heads_refused_total",
            "Signed audit heads refused (bad signature, other key, shrunk or rewritten log, a log "
            "that does not extend the head on record)",
            ["region"],
            registry=self.registry,
        )
        self.audit_chains_closed = Counter(
            "domicile_coordinator_audit_chains_closed_total",
            "Audit chains closed by a node's new incarnation (restored, or found put back from an "
            "older copy); the closed chain's last head is kept in the coordinator's store",
            ["region"],
            registry=self.registry,
        )
        self.subject_requests_open = Gauge(
            "domicile_coordinator_subject_requests_open",
            "Open data-subject requests by kind (erasure, access)",
            ["kind"],
            registry=self.registry,
        )
        self.subject_requests_overdue = Gauge(
            "domicile_coordinator_subject_requests_overdue",
            "Open data-subject requests past their legal due time by kind (erasure, access)",
            ["kind"],
            registry=self.registry,
        )
        self.subject_request_oldest_open = Gauge(
            "domicile_coordinator_subject_request_oldest_open_timestamp_seconds",
            "When the oldest open data-subject request of each kind was received (0: none open)",
            ["kind"],
            registry=self.registry,
        )
        self.legal_holds = Gauge(
            "domicile_coordinator_legal_holds",
            "Legal holds in force",
            registry=self.registry,
        )
        self.event_loop_lag = Gauge(
            "domicile_event_loop_lag_seconds",
            "How late the event loop ran a timer, as of the last check (twice a second)",
            registry=self.registry,
        )

    def set_topology(self, revision: int, up: int, down: int) -> None:
        self.revision.set(revision)
        self.nodes.labels(health=NodeHealth.UP.label).set(up)
        self.nodes.labels(health=NodeHealth.DOWN.label).set(down)

    def set_subjects(
        self,
        open_by_kind: Mapping[str, int],
        overdue_by_kind: Mapping[str, int],
        holds: int,
        oldest_open_ms: Mapping[str, int] | None = None,
    ) -> None:
        for kind, ms in (oldest_open_ms or {}).items():
            self.subject_request_oldest_open.labels(kind=kind).set(ms / 1000.0)
        for kind, count in open_by_kind.items():
            self.subject_requests_open.labels(kind=kind).set(count)
        for kind, count in overdue_by_kind.items():
            self.subject_requests_overdue.labels(kind=kind).set(count)
        self.legal_holds.set(holds)
