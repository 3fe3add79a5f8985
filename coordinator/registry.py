"""Nodes, their health and the topology revision: the coordinator's domain state.

Single-threaded by design: every method runs on the daemon's event loop, so no locks. A change
is committed to the store before memory is updated and before it is published, so a failed
write leaves both unchanged and a published revision is never reissued.

Revision bumps: a node registers for the first time, a node's addresses change, a node's health
changes, the cluster config (regions, namespaces, policy version) differs from the one the
last revision was built from, the erasure orders or legal holds change (see touch; they are
published apart from the topology, with the revision they changed at), or a node reports a
revision ahead of ours (see catch_up). A heartbeat or a re-registration that changes
none of these does not bump it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace

from coordinator.addresses import check_address
from coordinator.config import CoordinatorLimits
from coordinator.planner import plan_links
from coordinator.store import CoordinatorStore, SubjectChanges
from domicile.cluster import SIBLINGS_MAX_DEFAULT, ClusterSpec, NamespaceSpec
from domicile.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from domicile.model import check_node_id
from domicile.subjects import ErasureOrder, HoldRelease, LegalHold, SubjectOrders
from domicile.sync_modes import REALTIME
from domicile.topology import Link, NodeHealth, NodeInfo, Topology

log = logging.getLogger(__name__)

# Far below the uint64 of the wire, so that a revision can never wrap.
REVISION_MAX = 2**62


def cluster_fingerprint(cluster: ClusterSpec) -> str:
    """A digest of everything in the cluster config that the Topology message carries."""
    doc: dict[str, object] = {
        "policy_version": cluster.policy_version,
        "policy_pack_sha256": hashlib.sha256(cluster.policy_pack_yaml.encode()).hexdigest(),
        "retention_classes": [
            [r.name, r.period_s, r.legal_obligation, r.basis] for r in cluster.retention_classes
        ],
        "regions": [[r.name, r.country, r.jurisdiction] for r in cluster.regions],
        "namespaces": [
            [
                n.name,
                list(n.regions),
                n.is_global,
                int(n.conflict_mode),
                int(n.classification),
                n.owner,
                n.retention_class,
                n.description,
                # Only when set, so that the fingerprint of a config without purposes (and the
                # revision a coordinator resumes at) is what it was before purposes travelled.
                *([list(n.purposes)] if n.purposes else []),
            ]
            for n in cluster.namespaces
        ],
    }
    backups = {
        r.name: [
            r.backup.endpoint,
            r.backup.bucket,
            r.backup.bucket_region,
            r.backup.prefix,
            r.backup.retention_days,
            r.backup.generation_hours,
        ]
        for r in cluster.regions
        if r.backup is not None
    }
    if backups:
        # Each node gets its region's section with the topology; only when set, as below.
        doc["backups"] = backups
    if cluster.authz_policies_text:
        # Only when set, for the same reason as the purposes.
        doc["authz_policies_sha256"] = hashlib.sha256(cluster.authz_policies_text.encode()).hexdigest()
    # The namespace settings that travelled later, also only when set: a config that changed
    # only a schema (or these) was not published to the nodes before they were here.
    later = {n.name: _later_settings(n) for n in cluster.namespaces}
    if any(later.values()):
        doc["namespace_settings"] = {name: s for name, s in later.items() if s}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _later_settings(n: NamespaceSpec) -> dict[str, object]:
    out: dict[str, object] = {}
    if n.json_schema:
        out["json_schema_sha256"] = hashlib.sha256(n.json_schema.encode()).hexdigest()
    if n.quality_fields:
        out["quality_fields"] = list(n.quality_fields)
    if n.siblings_max != SIBLINGS_MAX_DEFAULT:
        out["siblings_max"] = n.siblings_max
    if n.min_regions_acked != 1:
        out["min_regions_acked"] = n.min_regions_acked
    if n.sync.mode != REALTIME or n.sync.to:
        out["sync"] = [n.sync.describe(), list(n.sync.to)]
    return out


class Registry:
    def __init__(
        self,
        cluster: ClusterSpec,
        store: CoordinatorStore,
        *,
        heartbeat_interval_ms: int,
        missed_heartbeats_max: int,
        limits: CoordinatorLimits,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        publish: Callable[[Topology], None],
        on_register: Callable[[str], None] = lambda region: None,
        publish_orders: Callable[[SubjectOrders], None] = lambda orders: None,
        on_remove: Callable[[str], None] = lambda region: None,
    ) -> None:
        """`on_register(region)` runs after every successful registration (the subject desk
        orders open erasures to a region that gains its first node), `on_remove(region)` after
        every removal (it stops waiting for a region that lost its last one). `publish_orders` gets the
        erasure orders and holds in force whenever they change (they travel apart from the
        topology, on WatchSubjectOrders)."""
        self.cluster = cluster
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.missed_heartbeats_max = missed_heartbeats_max
        self._store = store
        self._limits = limits
        self._clock = clock
        self._wall_clock = wall_clock
        self._publish = publish
        self._publish_orders = publish_orders
        self._on_register = on_register
        self._on_remove = on_remove
        self._nodes: dict[str, NodeInfo] = {}
        # Monotonic time of the last sign of life, for expiry; never persisted because a
        # monotonic clock means nothing across restarts.
        self._last_seen: dict[str, float] = {}
        self._unsaved_heartbeats: set[str] = set()
        self._links: tuple[Link, ...] = ()
        self._erasures: tuple[ErasureOrder, ...] = ()
        self._holds: tuple[LegalHold, ...] = ()
        self._released: tuple[HoldRelease, ...] = ()
        # The revision at which the erasure orders and holds were last published: a revision of
        # the topology's counter, so that it keeps increasing across restarts too.
        self._orders_revision = 0
        self._revision = 0
        self._closed = False
        # node id -> (incarnation epoch, highest change-log position it reported under it). Kept
        # in memory: after a coordinator restart it is rebuilt from the registrations, so a store
        # rewound across a coordinator restart is caught only if it falls behind a later report.
        self._log_heads: dict[str, tuple[int, int]] = {}
        self._load()

    def _load(self) -> None:
        state = self._store.load()
        now = self._clock()
        self._revision = state.revision
        self._nodes = {n.node_id: n for n in state.nodes}
        self._erasures = state.erasures
        self._holds = state.holds
        self._released = state.released
        # Every node gets a full grace period after a restart: the coordinator was not
        # listening, so silence before now says nothing about the node.
        self._last_seen = dict.fromkeys(self._nodes, now)
        self._links = plan_links(self._nodes.values(), self.cluster)
        configured = set(self.cluster.region_names())
        for node in self._nodes.values():
            if node.region not in configured:
                log.warning(
                    "node %s is registered in region %s, which the cluster config no longer has; "
                    "it gets no replication links, but erasure orders until it is removed",
                    node.node_id,
                    node.region,
                )
        fingerprint = cluster_fingerprint(self.cluster)
        if fingerprint != state.cluster_fingerprint:
            if state.cluster_fingerprint:
                log.info("cluster config changed since the last run; publishing a new revision")
            self._commit([], cluster_fingerprint=fingerprint)
        # At least 1 (a fresh store commits its first revision above), so that a watcher asking
        # for everything after 0 gets the current set, empty or not.
        self._orders_revision = self._revision

    @property
    def revision(self) -> int:
        return self._revision

    def node_count(self, health: NodeHealth) -> int:
        return sum(1 for n in self._nodes.values() if n.health is health)

    def topology(self) -> Topology:
        return Topology(
            revision=self._revision,
            cluster=self.cluster,
            nodes=tuple(self._nodes[k] for k in sorted(self._nodes)),
            links=self._links,
        )

    def orders(self) -> SubjectOrders:
        """The erasure orders and legal holds in force, with the revision they were published at."""
        return SubjectOrders(self._orders_revision, self._erasures, self._holds, self._released)

    def regions_with_nodes(self) -> set[str]:
        """Regions with a registered node, up or down: the regions that may hold records."""
        return {n.region for n in self._nodes.values()}

    @property
    def closed(self) -> bool:
        return self._closed

    def touch(
        self,
        changes: SubjectChanges,
        erasures: tuple[ErasureOrder, ...],
        holds: tuple[LegalHold, ...],
    ) -> int:
        """Commits `changes` of the data-subject state with a new revision, and publishes the
        erasure orders and holds now in force at that revision (publish_orders; the topology
        of the revision carries none); returns the revision."""
        self._check_open()
        self._commit([], subjects=changes, erasures=erasures, holds=holds)
        if changes.released:
            # From the store, as a restart reads them: every coordinator that publishes this set
            # carries the same releases, in the same order.
            self._released = self._store.recent_releases()
        self._publish_orders_now()
        return self._revision

    def log_head(self, node_id: str, epoch: int) -> int:
        """The highest change-log position `node_id` reported under incarnation `epoch`; 0 when
        none (or under another incarnation). A store behind it was copied back from an older
        copy: its node must take a new incarnation before it writes (node.rewind)."""
        recorded = self._log_heads.get(node_id)
        return recorded[1] if recorded is not None and recorded[0] == epoch else 0

    def _report_log_head(self, node_id: str, epoch: int, last_lsn: int) -> None:
        # Never lowered within an incarnation: a rewound store must keep looking rewound until
        # its node has moved to a new incarnation, even if its first restart is interrupted.
        recorded = self._log_heads.get(node_id)
        if recorded is None or recorded[0] != epoch:
            if recorded is None or epoch > recorded[0]:
                self._log_heads[node_id] = (epoch, last_lsn)
            return
        self._log_heads[node_id] = (epoch, max(recorded[1], last_lsn))

    def register(
        self,
        node_id: str,
        region: str,
        address: str,
        metrics_address: str,
        epoch: int = 0,
        last_lsn: int = 0,
    ) -> int:
        """Registers or re-registers a node and marks it up; returns the revision after it.
        `epoch` is the incarnation of the node's store (domicile.model.writer_id), `last_lsn` the
        last position of its change log."""
        self._check_open()
        check_node_id(node_id)
        recorded = self._store.node_epoch(node_id)
        if epoch < recorded:
            raise FailedPrecondition(
                f"node {node_id!r} registers with store incarnation {epoch}, but incarnation {recorded} "
                "has registered: this store is older than the node's last restore, and its dots and "
                "log positions may be reused; restore the node again (domicile restore)"
            )
        if self.cluster.region(region) is None:
            known = ", ".join(self.cluster.region_names()) or "none"
            raise NotFound(f"unknown region {region!r}; configured regions: {known}")
        bytes_max = self._limits.address_bytes_max
        check_address(address, "address", bytes_max)
        if metrics_address:
            check_address(metrics_address, "metrics address", bytes_max)
        existing = self._nodes.get(node_id)
        if existing is not None and existing.region != region:
            # A node id is the writer id in version vectors and holds its region's data; moving
            # it would carry that data into another jurisdiction.
            raise FailedPrecondition(
                f"node {node_id!r} is registered in region {existing.region!r} and cannot move to "
                f"{region!r}; register the node in {region!r} under a new node id"
            )
        if existing is None and len(self._nodes) >= self._limits.nodes_max:
            raise FailedPrecondition(
                f"the cluster already has {len(self._nodes)} nodes, the limit; no further node can register"
            )
        node = NodeInfo(
            node_id=node_id,
            region=region,
            address=address,
            metrics_address=metrics_address,
            health=NodeHealth.UP,
            last_heartbeat_unix_ms=self._wall_ms(),
        )
        if existing is None or replace(existing, last_heartbeat_unix_ms=node.last_heartbeat_unix_ms) != node:
            self._commit([node])
            if existing is None:
                log.info("node %s registered in %s at %s", node_id, region, address)
            else:
                log.info(
                    "node %s re-registered at %s (was %s, %s)",
                    node_id,
                    address,
                    existing.address,
                    existing.health.label,
                )
        else:
            self._nodes[node_id] = node
            self._unsaved_heartbeats.add(node_id)
        if epoch > recorded:
            self._store.save_node_epoch(node_id, epoch)
            log.info("node %s registered as incarnation %d", node_id, epoch)
        self._report_log_head(node_id, epoch, last_lsn)
        self._last_seen[node_id] = self._clock()
        self._on_register(region)
        return self._revision

    def remove(self, node_id: str) -> int:
        """Decommissions a node that is down: it leaves the topology and its links drop.
        Returns the revision without it."""
        self._check_open()
        check_node_id(node_id)
        node = self._nodes.get(node_id)
        if node is None:
            known = ", ".join(sorted(self._nodes)) or "none"
            raise NotFound(f"node {node_id!r} is not registered; registered nodes: {known}")
        if node.health is NodeHealth.UP:
            raise FailedPrecondition(
                f"node {node_id!r} is up; only a node that is down can be removed (stop it first, "
                f"then wait {self.missed_heartbeats_max} missed heartbeats)"
            )
        revision = self._revision + 1
        self._store.remove_node(revision, node_id)
        self._revision = revision
        del self._nodes[node_id]
        self._last_seen.pop(node_id, None)
        self._unsaved_heartbeats.discard(node_id)
        self._log_heads.pop(node_id, None)
        self._links = plan_links(self._nodes.values(), self.cluster)
        log.warning("node %s (%s) removed from the cluster at revision %d", node_id, node.region, revision)
        self._publish(self.topology())
        self._on_remove(node.region)
        return revision

    def region_of(self, node_id: str) -> str | None:
        """The region a registered node registered in; None for a node this registry does not know."""
        node = self._nodes.get(node_id)
        return node.region if node is not None else None

    def heartbeat(self, node_id: str, seen_revision: int = 0, last_lsn: int = 0, epoch: int = 0) -> int:
        """Records a sign of life (and the node's change-log position); a down node comes back
        up. Returns the current revision."""
        self._check_open()
        check_node_id(node_id)
        existing = self._nodes.get(node_id)
        if existing is None:
            raise NotFound(f"node {node_id!r} is not registered; register first with RegisterNode")
        self.catch_up(seen_revision)
        self._report_log_head(node_id, epoch, last_lsn)
        node = replace(existing, health=NodeHealth.UP, last_heartbeat_unix_ms=self._wall_ms())
        if existing.health is not NodeHealth.UP:
            self._commit([node])
            log.info("node %s is up again", node_id)
        else:
            self._nodes[node_id] = node
            self._unsaved_heartbeats.add(node_id)
        self._last_seen[node_id] = self._clock()
        return self._revision

    def check_health(self) -> list[str]:
        """Marks down every up node silent for longer than the allowed missed heartbeats, in
        one revision; returns their ids. Also saves the heartbeat times gathered so far."""
        if self._closed:
            return []
        timeout_s = self.heartbeat_interval_ms * self.missed_heartbeats_max / 1000.0
        now = self._clock()
        expired = [
            replace(node, health=NodeHealth.DOWN)
            for node_id, node in sorted(self._nodes.items())
            if node.health is NodeHealth.UP and now - self._last_seen[node_id] > timeout_s
        ]
        if expired:
            self._commit(expired)
            for node in expired:
                log.warning(
                    "node %s is down: no heartbeat for more than %d intervals of %d ms",
                    node.node_id,
                    self.missed_heartbeats_max,
                    self.heartbeat_interval_ms,
                )
        self.flush()
        return [n.node_id for n in expired]

    def flush(self) -> None:
        if not self._unsaved_heartbeats:
            return
        self._store.save_heartbeats(self._nodes[k] for k in sorted(self._unsaved_heartbeats))
        self._unsaved_heartbeats.clear()

    def close(self) -> None:
        """Refuses further changes and saves what is pending; idempotent."""
        if self._closed:
            return
        self.flush()
        self._closed = True

    def catch_up(self, seen_revision: int) -> None:
        """Moves the revision past one a node reports having seen.

        A node can only be ahead when this coordinator's state was lost (a wiped or restored
        data directory). Jumping past it keeps the contract that revisions only increase as
        every node sees them, so nodes accept the next topology instead of waiting for the
        coordinator to count up to where they were.
        """
        self._check_open()
        if seen_revision <= self._revision:
            return
        if seen_revision >= REVISION_MAX:
            raise InvalidArgument(
                f"topology revision {seen_revision} is beyond any this coordinator issues "
                f"(below {REVISION_MAX}); send a revision received from the coordinator"
            )
        log.warning(
            "a node has seen topology revision %d, ahead of this coordinator's %d: state was lost; "
            "continuing from %d",
            seen_revision,
            self._revision,
            seen_revision + 1,
        )
        self._commit([], revision=seen_revision + 1)
        # The node may be ahead on the orders too: republish them at a revision it will take.
        self._publish_orders_now()

    def _publish_orders_now(self) -> None:
        self._orders_revision = self._revision
        self._publish_orders(self.orders())

    def _commit(
        self,
        changed: list[NodeInfo],
        cluster_fingerprint: str | None = None,
        revision: int | None = None,
        *,
        subjects: SubjectChanges | None = None,
        erasures: tuple[ErasureOrder, ...] | None = None,
        holds: tuple[LegalHold, ...] | None = None,
    ) -> None:
        revision = self._revision + 1 if revision is None else revision
        self._store.commit(revision, changed, cluster_fingerprint, subjects)
        self._revision = revision
        if erasures is not None:
            self._erasures = erasures
        if holds is not None:
            self._holds = holds
        joined = False
        for node in changed:
            joined = joined or node.node_id not in self._nodes
            self._nodes[node.node_id] = node
            self._unsaved_heartbeats.discard(node.node_id)
        if joined:
            self._links = plan_links(self._nodes.values(), self.cluster)
        self._publish(self.topology())

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("coordinator is shutting down; retry against the restarted coordinator")

    def _wall_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def wall_ms(self) -> int:
        """The coordinator's wall clock (Unix ms), which nodes compare their own clocks with."""
        return self._wall_ms()
