"""The coordinator's Topology message <-> domicile.topology."""

from __future__ import annotations

from domicile.cluster import ClusterSpec, NamespaceSpec, RegionSpec
from domicile.model import Classification, ConflictMode
from domicile.subjects import DEFAULT_RETENTION_CLASSES
from domicile.topology import LinkSpec, NodeInfo, Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.wire.subjects import erasure_from_pb, hold_from_pb, retention_from_pb, retention_to_pb


def topology_from_pb(msg: cpb.Topology) -> Topology:
    cluster = ClusterSpec(
        regions=tuple(RegionSpec(r.name, r.country, r.jurisdiction) for r in msg.regions),
        namespaces=tuple(
            NamespaceSpec(
                name=n.name,
                regions=tuple(n.regions),
                is_global=n.__getattribute__("global"),
                conflict_mode=ConflictMode(n.conflict_mode) if n.conflict_mode else ConflictMode.SIBLINGS,
                classification=Classification(n.classification),
                owner=n.owner,
                retention_class=n.retention_class,
                description=n.description,
            )
            for n in msg.namespaces
        ),
        policy_version=msg.policy_version,
        policy_pack_yaml=msg.policy_pack_yaml,
        policy_pack_source="coordinator" if msg.policy_pack_yaml else "",
        retention_classes=tuple(retention_from_pb(r) for r in msg.retention_classes)
        or DEFAULT_RETENTION_CLASSES,
    )
    nodes = tuple(
        NodeInfo(
            node_id=n.node_id,
            region=n.region,
            address=n.address,
            metrics_address=n.metrics_address,
            up=n.health != cpb.NODE_HEALTH_DOWN,
            last_heartbeat_unix_ms=n.last_heartbeat_unix_ms,
        )
        for n in msg.nodes
    )
    links = tuple(
        LinkSpec(li.source_node_id, li.target_node_id, frozenset(li.namespaces)) for li in msg.links
    )
    return Topology(
        msg.revision,
        cluster,
        nodes,
        links,
        erasures=tuple(erasure_from_pb(e) for e in msg.erasures),
        holds=tuple(hold_from_pb(h) for h in msg.holds),
    )


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
        )
        setattr(msg, "global", n.is_global)
    out.policy_version = cluster.policy_version
    out.policy_pack_yaml = cluster.policy_pack_yaml
    for retention in cluster.retention_classes:
        retention_to_pb(retention, out.retention_classes.add())
