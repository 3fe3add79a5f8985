"""The topology at one revision: regions and namespaces (the cluster spec), nodes with their
health, replication links, open erasure orders and legal holds.

One type for every process: the coordinator builds it, the node acts on it and the SDK routes
with it, each through the views below. It is built from the coordinator's Topology message by
domicile.wire.topology, which decodes values this version does not know to UNSPECIFIED.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from domicile.cluster import BackupSpec, ClusterSpec, NamespaceSpec, RegionSpec
from domicile.subjects import ErasureOrder, LegalHold


class NodeHealth(enum.IntEnum):
    """Values equal the protobuf NodeHealth enum so that the wire mapping is the identity."""

    # Not reported, or a value a newer coordinator sent that this version has no name for.
    UNSPECIFIED = 0
    UP = 1
    DOWN = 2
    # The SDK has always called the unspecified health UNKNOWN; both names stay valid.
    UNKNOWN = 0

    @property
    def label(self) -> str:
        return "unknown" if self is NodeHealth.UNSPECIFIED else self.name.lower()


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    region: str
    address: str
    metrics_address: str = ""
    health: NodeHealth = NodeHealth.UNSPECIFIED
    last_heartbeat_unix_ms: int = 0

    def describe(self) -> str:
        return f"node {self.node_id} ({self.region}) at {self.address}"


@dataclass(frozen=True)
class Link:
    """Source streams to target the mutations of `namespaces` (in cluster config order)."""

    source_node_id: str
    target_node_id: str
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    revision: int = 0
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    nodes: tuple[NodeInfo, ...] = ()
    links: tuple[Link, ...] = ()
    # Erasures some region has not completed yet and the legal holds in force, oldest first.
    # They do not travel in the Topology message: a node gets them on WatchSubjectOrders and its
    # TopologyView folds the last set in here, where every reader finds them.
    erasures: tuple[ErasureOrder, ...] = ()
    holds: tuple[LegalHold, ...] = ()
    # The backup section of the receiving node's region, as the coordinator sends it to that
    # node alone (WatchTopology); None elsewhere and when the region has none.
    backup: BackupSpec | None = None
    _nodes_by_id: dict[str, NodeInfo] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_nodes_by_id", {n.node_id: n for n in self.nodes})

    @property
    def regions(self) -> tuple[RegionSpec, ...]:
        return self.cluster.regions

    @property
    def namespaces(self) -> tuple[NamespaceSpec, ...]:
        return self.cluster.namespaces

    @property
    def policy_version(self) -> str:
        return self.cluster.policy_version

    @property
    def policy_pack_yaml(self) -> str:
        """The residency policy pack in force as YAML; "" when only the namespace scopes apply."""
        return self.cluster.policy_pack_yaml

    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    def namespace(self, name: str) -> NamespaceSpec | None:
        return self.cluster.find_namespace(name)

    def node(self, node_id: str) -> NodeInfo | None:
        return self._nodes_by_id.get(node_id)

    def nodes_in(self, region: str) -> list[NodeInfo]:
        return [n for n in self.nodes if n.region == region]

    def outbound(self, node_id: str) -> list[Link]:
        return [link for link in self.links if link.source_node_id == node_id]
