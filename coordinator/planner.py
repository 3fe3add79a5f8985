"""Replication links from the registered nodes and the namespace scopes. Pure: no I/O, no clock.

A link S->T exists for every ordered pair of distinct nodes whose regions both lie in the scope
of at least one namespace; it carries exactly those namespaces.

Links are planned regardless of node health. A source keeps retrying a down target with
back-off, so a node that flaps does not make every link around it disappear and come back
(each change would be a new revision pushed to every node and a reconnect storm when it
returns). Health is in the topology for callers that route requests, not for link planning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from domicile.cluster import ClusterSpec
from domicile.topology import Link


class Placed(Protocol):
    """Anything that names a node and its region."""

    @property
    def node_id(self) -> str: ...

    @property
    def region(self) -> str: ...


def namespaces_by_region(cluster: ClusterSpec) -> dict[str, tuple[str, ...]]:
    """For each configured region, the namespaces (in config order) whose scope allows it.

    A region missing from the cluster config allows nothing, not even global namespaces: a node
    left registered in a region that was since removed from the config must not receive data.
    """
    return {
        region: tuple(ns.name for ns in cluster.namespaces if ns.allows(region))
        for region in cluster.region_names()
    }


def plan_links(nodes: Iterable[Placed], cluster: ClusterSpec) -> tuple[Link, ...]:
    """Links sorted by (source, target); each lists the namespaces both ends may hold."""
    allowed = namespaces_by_region(cluster)
    placed = sorted({(n.node_id, n.region) for n in nodes})
    ids = [node_id for node_id, _ in placed]
    if len(set(ids)) != len(ids):
        raise ValueError("plan_links: a node id appears with two different regions")
    links = []
    for source_id, source_region in placed:
        source_ns = allowed.get(source_region, ())
        if not source_ns:
            continue
        for target_id, target_region in placed:
            if target_id == source_id:
                continue
            target_ns = set(allowed.get(target_region, ()))
            shared = tuple(name for name in source_ns if name in target_ns)
            if shared:
                links.append(Link(source_id, target_id, shared))
    return tuple(links)
