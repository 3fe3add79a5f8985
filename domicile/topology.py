"""The topology as the domain sees it: nodes, their health, links, and the cluster spec, at one
revision. Built from the coordinator's Topology message (see domicile.wire.topology)."""

from __future__ import annotations

from dataclasses import dataclass, field

from domicile.cluster import ClusterSpec
from domicile.subjects import ErasureOrder, LegalHold


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    region: str
    address: str
    metrics_address: str = ""
    up: bool = True
    last_heartbeat_unix_ms: int = 0


@dataclass(frozen=True)
class LinkSpec:
    source_node_id: str
    target_node_id: str
    namespaces: frozenset[str]


@dataclass(frozen=True)
class Topology:
    revision: int
    cluster: ClusterSpec
    nodes: tuple[NodeInfo, ...] = ()
    links: tuple[LinkSpec, ...] = ()
    # Erasures not yet completed by every region, and the legal holds in force.
    erasures: tuple[ErasureOrder, ...] = ()
    holds: tuple[LegalHold, ...] = ()
    _nodes_by_id: dict[str, NodeInfo] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_nodes_by_id", {n.node_id: n for n in self.nodes})

    def node(self, node_id: str) -> NodeInfo | None:
        return self._nodes_by_id.get(node_id)

    def outbound(self, node_id: str) -> list[LinkSpec]:
        return [link for link in self.links if link.source_node_id == node_id]

    def nodes_in(self, region: str) -> list[NodeInfo]:
        return [n for n in self.nodes if n.region == region]
