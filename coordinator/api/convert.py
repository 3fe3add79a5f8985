"""Domain topology -> protobuf."""

from __future__ import annotations

from coordinator.topology import Topology
from domicile.v1 import coordinator_pb2 as cpb


def topology_to_pb(topology: Topology) -> cpb.Topology:
    msg = cpb.Topology(revision=topology.revision, policy_version=topology.cluster.policy_version)
    for region in topology.cluster.regions:
        msg.regions.add(name=region.name, country=region.country, jurisdiction=region.jurisdiction)
    for node in topology.nodes:
        msg.nodes.add(
            node_id=node.node_id,
            region=node.region,
            address=node.address,
            metrics_address=node.metrics_address,
            health=int(node.health),  # type: ignore[arg-type]
            last_heartbeat_unix_ms=node.last_heartbeat_unix_ms,
        )
    for ns in topology.cluster.namespaces:
        ns_msg = msg.namespaces.add(
            name=ns.name,
            regions=list(ns.regions),
            conflict_mode=int(ns.conflict_mode),  # type: ignore[arg-type]
            classification=int(ns.classification),  # type: ignore[arg-type]
            owner=ns.owner,
            retention_class=ns.retention_class,
            description=ns.description,
        )
        # `global` is a Python keyword, so the field is only reachable through setattr.
        setattr(ns_msg, "global", ns.is_global)
    for link in topology.links:
        msg.links.add(
            source_node_id=link.source_node_id,
            target_node_id=link.target_node_id,
            namespaces=list(link.namespaces),
        )
    return msg
