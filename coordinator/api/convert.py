"""The coordinator's topology -> its Topology message."""

from __future__ import annotations

from coordinator.topology import Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.wire.subjects import erasure_to_pb, hold_to_pb
from domicile.wire.topology import cluster_to_pb


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
