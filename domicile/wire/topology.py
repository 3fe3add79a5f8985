"""The coordinator's Topology message <-> domicile.topology.

Decoding never fails on an enum value this version does not know (a newer coordinator): it
becomes UNSPECIFIED, and each reader decides what UNSPECIFIED means for it (see topology_from_pb).
"""

from __future__ import annotations

from domicile.cluster import (
    SIBLINGS_MAX_DEFAULT,
    SIBLINGS_MAX_LIMIT,
    BackupSpec,
    ClusterSpec,
    NamespaceSpec,
    RegionSpec,
)
from domicile.errors import InvalidArgument
from domicile.model import Classification, ConflictMode
from domicile.subjects import DEFAULT_RETENTION_CLASSES
from domicile.sync_modes import BATCH, REALTIME, REALTIME_SPEC, SCHEDULED, Cron, SyncSpec
from domicile.topology import Link, NodeHealth, NodeInfo, Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.wire.enums import enum_or
from domicile.wire.subjects import (
    erasure_from_pb,
    erasure_to_pb,
    hold_from_pb,
    hold_to_pb,
    retention_from_pb,
    retention_to_pb,
)


def conflict_mode_from_pb(value: int) -> ConflictMode:
    # The proto leaves an unset mode to the server, whose default is siblings. An unknown mode
    # stays UNSPECIFIED: the node then keeps siblings too (only LWW drops concurrent values), so
    # a mode it cannot apply never loses a write.
    if value == ConflictMode.UNSPECIFIED:
        return ConflictMode.SIBLINGS
    return enum_or(ConflictMode, value, ConflictMode.UNSPECIFIED)


def namespace_from_pb(msg: cpb.Namespace) -> NamespaceSpec:
    return NamespaceSpec(
        name=msg.name,
        regions=tuple(msg.regions),
        is_global=bool(getattr(msg, "global")),
        conflict_mode=conflict_mode_from_pb(msg.conflict_mode),
        # UNSPECIFIED is judged as personal data by the policy, so an unknown default
        # classification can only make decisions stricter.
        classification=enum_or(Classification, msg.classification, Classification.UNSPECIFIED),
        owner=msg.owner,
        retention_class=msg.retention_class,
        description=msg.description,
        purposes=tuple(msg.purposes),
        json_schema=msg.json_schema,
        quality_fields=tuple(msg.quality_fields),
        # 0: a coordinator that does not send it; the nodes then apply the default.
        siblings_max=min(msg.siblings_max or SIBLINGS_MAX_DEFAULT, SIBLINGS_MAX_LIMIT),
        min_regions_acked=max(msg.min_regions_acked, 1),
        sync=sync_from_pb(msg.sync),
    )


def sync_from_pb(msg: cpb.SyncMode) -> SyncSpec:
    """A sync mode the node cannot read is taken as realtime: shipping sooner than configured
    costs money, never data or residency."""
    try:
        if msg.mode == BATCH:
            return SyncSpec(BATCH, interval_s=msg.interval_s, to=tuple(msg.to))
        if msg.mode == SCHEDULED:
            return SyncSpec(SCHEDULED, window=Cron.parse(msg.window), window_s=msg.window_s, to=tuple(msg.to))
    except InvalidArgument:
        pass
    return REALTIME_SPEC


def sync_to_pb(spec: SyncSpec, out: cpb.SyncMode) -> None:
    if spec.mode == REALTIME:
        return
    out.mode = spec.mode
    out.interval_s = spec.interval_s
    out.window = spec.window.text if spec.window is not None else ""
    out.window_s = spec.window_s
    out.to.extend(spec.to)


def topology_from_pb(msg: cpb.Topology) -> Topology:
    cluster = ClusterSpec(
        regions=tuple(RegionSpec(r.name, r.country, r.jurisdiction) for r in msg.regions),
        namespaces=tuple(namespace_from_pb(n) for n in msg.namespaces),
        policy_version=msg.policy_version,
        policy_pack_yaml=msg.policy_pack_yaml,
        policy_pack_source="coordinator" if msg.policy_pack_yaml else "",
        authz_policies_text=msg.authz_policies,
        authz_policies_source="the coordinator's topology" if msg.authz_policies else "",
        retention_classes=tuple(retention_from_pb(r) for r in msg.retention_classes)
        or DEFAULT_RETENTION_CLASSES,
    )
    nodes = tuple(
        NodeInfo(
            node_id=n.node_id,
            region=n.region,
            address=n.address,
            metrics_address=n.metrics_address,
            health=enum_or(NodeHealth, n.health, NodeHealth.UNSPECIFIED),
            last_heartbeat_unix_ms=n.last_heartbeat_unix_ms,
        )
        for n in msg.nodes
    )
    links = tuple(Link(li.source_node_id, li.target_node_id, tuple(li.namespaces)) for li in msg.links)
    return Topology(
        msg.revision,
        cluster,
        nodes,
        links,
        erasures=tuple(erasure_from_pb(e) for e in msg.erasures),
        holds=tuple(hold_from_pb(h) for h in msg.holds),
        backup=backup_from_pb(msg.backup) if msg.HasField("backup") else None,
    )


def backup_to_pb(spec: BackupSpec, out: cpb.RegionBackup) -> None:
    out.endpoint = spec.endpoint
    out.bucket = spec.bucket
    out.bucket_region = spec.bucket_region
    out.prefix = spec.prefix
    out.retention_days = spec.retention_days
    out.generation_hours = spec.generation_hours


def backup_from_pb(msg: cpb.RegionBackup) -> BackupSpec:
    return BackupSpec(
        endpoint=msg.endpoint,
        bucket=msg.bucket,
        bucket_region=msg.bucket_region,
        prefix=msg.prefix,
        retention_days=msg.retention_days,
        generation_hours=msg.generation_hours,
    )


def with_backup(message: cpb.Topology, spec: BackupSpec) -> cpb.Topology:
    """A copy of `message` carrying `spec`, the backup section of the node it is sent to."""
    out = cpb.Topology()
    out.CopyFrom(message)
    backup_to_pb(spec, out.backup)
    return out


def cluster_to_pb(cluster: ClusterSpec, out: cpb.Topology) -> None:
    """Fills the regions, namespaces, policy version and policy pack of a Topology message."""
    for r in cluster.regions:
        out.regions.add(name=r.name, country=r.country, jurisdiction=r.jurisdiction)
    for n in cluster.namespaces:
        msg = out.namespaces.add(
            name=n.name,
            regions=list(n.regions),
            conflict_mode=int(n.conflict_mode),  # type: ignore[arg-type]
            classification=int(n.classification),  # type: ignore[arg-type]
            owner=n.owner,
            retention_class=n.retention_class,
            description=n.description,
            purposes=list(n.purposes),
            json_schema=n.json_schema,
            quality_fields=list(n.quality_fields),
            siblings_max=n.siblings_max,
            min_regions_acked=n.min_regions_acked,
        )
        sync_to_pb(n.sync, msg.sync)
        setattr(msg, "global", n.is_global)
    out.policy_version = cluster.policy_version
    out.policy_pack_yaml = cluster.policy_pack_yaml
    out.authz_policies = cluster.authz_policies_text
    for retention in cluster.retention_classes:
        retention_to_pb(retention, out.retention_classes.add())


def topology_to_pb(topology: Topology) -> cpb.Topology:
    msg = cpb.Topology(revision=topology.revision)
    cluster_to_pb(topology.cluster, msg)
    for node in topology.nodes:
        msg.nodes.add(
            node_id=node.node_id,
            region=node.region,
            address=node.address,
            metrics_address=node.metrics_address,
            health=int(node.health),  # type: ignore[arg-type]
            last_heartbeat_unix_ms=node.last_heartbeat_unix_ms,
        )
    for link in topology.links:
        msg.links.add(
            source_node_id=link.source_node_id,
            target_node_id=link.target_node_id,
            namespaces=list(link.namespaces),
        )
    for erasure in topology.erasures:
        erasure_to_pb(erasure, msg.erasures.add())
    for hold in topology.holds:
        hold_to_pb(hold, msg.holds.add())
    return msg
