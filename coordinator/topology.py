"""The coordinator's domain view of the topology: nodes with their health, links, the cluster
spec, open erasure orders and legal holds, at one revision. Protobuf types stay in coordinator/api/."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from domicile.cluster import ClusterSpec
from domicile.subjects import ErasureOrder, LegalHold


class NodeHealth(enum.IntEnum):
    """Values equal the protobuf NodeHealth enum so that the wire mapping is the identity."""

    UNSPECIFIED = 0
    UP = 1
    DOWN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class NodeState:
    node_id: str
    region: str
    address: str
    metrics_address: str
    health: NodeHealth
    last_heartbeat_unix_ms: int


@dataclass(frozen=True)
class Link:
    """Source streams to target the mutations of `namespaces` (in cluster config order)."""

    source_node_id: str
    target_node_id: str
    namespaces: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    revision: int
    cluster: ClusterSpec
    nodes: tuple[NodeState, ...]
    links: tuple[Link, ...]
    # Erasures some region has not completed yet and the legal holds in force, oldest first:
    # nodes learn of both only from the topology.
    erasures: tuple[ErasureOrder, ...] = ()
    holds: tuple[LegalHold, ...] = ()
