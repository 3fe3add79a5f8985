"""status: the topology as the coordinator sees it and every node as it sees itself."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from domicile.cli import connect
from domicile.cli.output import print_json, table
from domicile.client import AsyncClient, NodeInfo, NodeStatus, RetryPolicy, Topology
from domicile.errors import DomicileError

UNREACHABLE = "unreachable"
# Nodes are asked concurrently, at most this many at a time.
_QUERIES_INFLIGHT_MAX = 16


@dataclass(frozen=True)
class NodeReport:
    node: NodeInfo
    status: NodeStatus | None
    error: str = ""

    @property
    def health(self) -> str:
        return self.node.health.label if self.status is not None else UNREACHABLE


@dataclass(frozen=True)
class LinkReport:
    source_node_id: str
    target_node_id: str
    backlog: int | None
    lag_ms_p99: float | None
    connected: bool | None
    namespaces: tuple[str, ...]


async def gather_reports(client: AsyncClient, topology: Topology) -> list[NodeReport]:
    limit = asyncio.Semaphore(_QUERIES_INFLIGHT_MAX)

    async def one(node: NodeInfo) -> NodeReport:
        async with limit:
            try:
                return NodeReport(node, await client.node_status(node_id=node.node_id))
            except DomicileError as exc:
                return NodeReport(node, None, exc.message)

    return list(await asyncio.gather(*(one(n) for n in topology.nodes)))


def link_reports(topology: Topology, reports: list[NodeReport]) -> list[LinkReport]:
    """Joins each topology link with what its source (backlog) and target (lag) report."""
    by_node = {r.node.node_id: r.status for r in reports}
    out = []
    for link in topology.links:
        source, target = by_node.get(link.source_node_id), by_node.get(link.target_node_id)
        outbound = next(
            (s for s in (source.outbound if source else ()) if s.target_node_id == link.target_node_id), None
        )
        inbound = next(
            (s for s in (target.inbound if target else ()) if s.source_node_id == link.source_node_id), None
        )
        connected = outbound.connected if outbound else inbound.connected if inbound else None
        out.append(
            LinkReport(
                source_node_id=link.source_node_id,
                target_node_id=link.target_node_id,
                backlog=outbound.backlog if outbound else None,
                lag_ms_p99=inbound.lag_ms_p99 if inbound else None,
                connected=connected,
                namespaces=link.namespaces,
            )
        )
    return out


def _or_dash(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render_text(
    coordinator: str, topology: Topology, reports: list[NodeReport], links: list[LinkReport]
) -> str:
    by_region: dict[str, list[NodeReport]] = {}
    for report in reports:
        by_region.setdefault(report.node.region, []).append(report)
    rows: list[list[object]] = []
    for region in topology.region_names():
        region_reports = by_region.pop(region, [])
        if not region_reports:
            rows.append([region, "-", "no node", "-", "-", "-", "-", "-", "-", "-"])
        for r in region_reports:
            s = r.status
            rows.append(
                [
                    region,
                    r.node.node_id,
                    r.health,
                    _or_dash(s.records_stored if s else None),
                    _or_dash(s.topology_revision if s else None),
                    _or_dash(s.policy_version if s else None),
                    _or_dash(s.audit_entries if s else None),
                    _or_dash(s.audit_exported_size if s else None),
                    _or_dash(s.compliance_violations if s else None),
                    r.node.address,
                ]
            )
    # Nodes of regions the topology does not list (should not happen; still worth showing).
    for region, extra in by_region.items():
        rows.extend(
            [region, r.node.node_id, r.health, "-", "-", "-", "-", "-", "-", r.node.address] for r in extra
        )
    parts = [
        f"coordinator {coordinator}: topology revision {topology.revision}, "
        f"policy {topology.policy_version or '-'}",
        "",
        table(
            [
                "region",
                "node",
                "health",
                "records",
                "topology rev",
                "policy",
                "audit entries",
                "audit exported",
                "violations",
                "address",
            ],
            rows,
        ),
    ]
    fills = [r for r in reports if r.status is not None and r.status.backfill is not None]
    if fills:
        parts.append("")
        parts.append(
            table(
                ["backfill", "state", "policy", "pairs done", "keys pulled", "rate keys/s"],
                [_backfill_row(r) for r in fills],
            )
        )
    unreachable = [r for r in reports if r.status is None]
    if unreachable:
        parts.append("")
        parts.extend(f"{r.node.node_id}: {UNREACHABLE}: {r.error}" for r in unreachable)
    parts.append("")
    if links:
        link_rows = [
            [
                f"{li.source_node_id} -> {li.target_node_id}",
                _or_dash(li.backlog),
                _or_dash(li.lag_ms_p99),
                _or_dash(li.connected),
                ", ".join(li.namespaces),
            ]
            for li in links
        ]
        parts.append(table(["link", "backlog", "lag p99 ms", "connected", "namespaces"], link_rows))
    else:
        parts.append("no replication links")
    return "\n".join(parts)


def _backfill_row(r: NodeReport) -> list[object]:
    """A node's backfill after the policy loosened: records it was refused before, pulled."""
    assert r.status is not None and r.status.backfill is not None
    b = r.status.backfill
    return [
        r.node.node_id,
        b.state,
        f"{b.policy_version} (rev {b.topology_revision})",
        f"{b.pairs_done}/{b.pairs_total}",
        b.keys_pulled,
        f"{b.rate_keys_per_second:g}",
    ]


def render_json(
    coordinator: str, topology: Topology, reports: list[NodeReport], links: list[LinkReport]
) -> Any:
    nodes = []
    for r in reports:
        s = r.status
        nodes.append(
            {
                "node_id": r.node.node_id,
                "region": r.node.region,
                "address": r.node.address,
                "metrics_address": r.node.metrics_address,
                "health": r.health,
                "coordinator_health": r.node.health.label,
                "reachable": s is not None,
                "error": r.error,
                "records_stored": s.records_stored if s else None,
                "tombstones_stored": s.tombstones_stored if s else None,
                "last_lsn": s.last_lsn if s else None,
                "topology_revision": s.topology_revision if s else None,
                "policy_version": s.policy_version if s else None,
                "conflicts_total": s.conflicts_total if s else None,
                "uptime_seconds": s.uptime_seconds if s else None,
                "audit_entries": s.audit_entries if s else None,
                "audit_exported_size": s.audit_exported_size if s else None,
                "compliance_violations": s.compliance_violations if s else None,
                "authz_policy_version": s.authz_policy_version if s else None,
                "backfill": asdict(s.backfill) if s and s.backfill else None,
            }
        )
    return {
        "coordinator": coordinator,
        "topology_revision": topology.revision,
        "policy_version": topology.policy_version,
        "regions": topology.region_names(),
        "nodes": nodes,
        "links": [
            {
                "source_node_id": li.source_node_id,
                "target_node_id": li.target_node_id,
                "backlog": li.backlog,
                "lag_ms_p99": li.lag_ms_p99,
                "connected": li.connected,
                "namespaces": list(li.namespaces),
            }
            for li in links
        ],
    }


async def _collect(args: argparse.Namespace) -> tuple[Topology, list[NodeReport]]:
    # One attempt per node: a node that does not answer is reported, not waited for.
    async with AsyncClient(
        args.coordinator,
        deadline_s=args.deadline,
        **connect.client_options(args),
        retry=RetryPolicy(attempts_max=1),
    ) as client:
        topology = await client.topology()
        return topology, await gather_reports(client, topology)


def status(args: argparse.Namespace) -> int:
    topology, reports = asyncio.run(_collect(args))
    links = link_reports(topology, reports)
    if args.json:
        print_json(render_json(args.coordinator, topology, reports, links))
    else:
        print(render_text(args.coordinator, topology, reports, links))
    return 0
