"""The coordinator's domain view of the topology: nodes with their health, links, and the
cluster spec, at one revision. Protobuf types stay in coordinator/api/."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from domicile.cluster import ClusterSpec


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
