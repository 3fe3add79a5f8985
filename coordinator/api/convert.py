"""Domain topology and audit heads <-> protobuf."""

from __future__ import annotations

from coordinator.audit_heads import AcceptedHead
from coordinator.topology import Topology
from domicile import audit_wire, subject_wire
from domicile.audit import SignedHead
from domicile.topology import cluster_to_pb
from domicile.v1 import audit_pb2 as apb
from domicile.v1 import coordinator_pb2 as cpb


def head_to_bytes(head: SignedHead) -> bytes:
    msg = apb.SignedAuditHead()
    audit_wire.head_to_pb(head, msg)
    return msg.SerializeToString()


def head_from_bytes(data: bytes) -> SignedHead:
    return audit_wire.head_from_pb(apb.SignedAuditHead.FromString(data))


def stored_heads(rows: dict[str, tuple[bytes, int]]) -> dict[str, AcceptedHead]:
    return {region: AcceptedHead(head_from_bytes(raw), ms) for region, (raw, ms) in rows.items()}


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
        subject_wire.erasure_to_pb(erasure, msg.erasures.add())
    for hold in topology.holds:
        subject_wire.hold_to_pb(hold, msg.holds.add())
    return msg
