"""Which node a call goes to, from the topology alone (no network)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from domicile.errors import InvalidArgument, Unavailable
from domicile.topology import NodeHealth, NodeInfo, Topology


def route(
    topology: Topology,
    namespace: str | None,
    *,
    region: str | None = None,
    preferred_region: str | None = None,
    allowed_regions: Sequence[str] | None = None,
    avoid: Collection[str] = (),
    node_id: str | None = None,
    spread: int = 0,
) -> NodeInfo:
    """The node a call goes to.

    `region` (explicit) restricts the choice to that region. Otherwise the candidates are the
    nodes of `allowed_regions` (the regions a refusal named) or of the namespace's scope (every
    region for a global or unknown namespace). Among them: nodes not in `avoid` (node ids that
    just failed), then up nodes, then the preferred region, then scope order. Nodes the
    coordinator reports down stay as a last resort because its view can lag behind a restart.
    Several nodes of one region that rank alike (daemons over the region's one database) take
    turns: `spread` (a counter of the caller's) picks among them. `node_id` asks for one node by id.
    """
    if node_id is not None:
        found = next((n for n in topology.nodes if n.node_id == node_id), None)
        if found is None:
            known_nodes = ", ".join(n.node_id for n in topology.nodes) or "none"
            raise InvalidArgument(f"unknown node {node_id!r}; registered nodes: {known_nodes}")
        return found
    known = topology.region_names()
    if preferred_region is not None and preferred_region not in known:
        raise InvalidArgument(
            f"client region {preferred_region!r} is not a region of the cluster; "
            f"regions: {', '.join(known) or 'none'}"
        )
    if region is not None:
        if region not in known:
            raise InvalidArgument(f"unknown region {region!r}; regions: {', '.join(known) or 'none'}")
        scope = [region]
        what = f"region {region}"
    elif allowed_regions is not None:
        scope = [r for r in allowed_regions if r in known]
        what = f"the regions that may hold the record ({', '.join(allowed_regions) or 'none'})"
    else:
        spec = topology.namespace(namespace) if namespace else None
        scope = known if spec is None or spec.is_global else list(spec.regions)
        what = f"the regions that may hold namespace {namespace}" if spec else "the cluster"
        what = f"{what} ({', '.join(scope) or 'none'})"
    rank = {r: i for i, r in enumerate(scope)}
    candidates = [n for n in topology.nodes if n.region in rank]
    if not candidates:
        raise Unavailable(f"no node is registered in {what}")

    def preference(n: NodeInfo) -> tuple[bool, bool, bool, int]:
        return (
            n.node_id in avoid,
            n.health is not NodeHealth.UP,
            n.region != preferred_region,
            rank[n.region],
        )

    best = min(preference(n) for n in candidates)
    equals = sorted((n for n in candidates if preference(n) == best), key=lambda n: n.node_id)
    return equals[spread % len(equals)]


def check_known_region(topology: Topology, region: str) -> None:
    known = topology.region_names()
    if region not in known:
        raise InvalidArgument(f"unknown region {region!r}; regions: {', '.join(known) or 'none'}")
