"""nodes remove NODE_ID: decommissions a node that is down.

First every remaining node that shares a namespace with it pulls, from each peer it replicates
that namespace with, every key the two hold differently (an anti-entropy round, asked of the
node with `repair`), pass after pass until a pass moves nothing: writes the dead node shipped
to some replicas only then reach all the others. Only then does the coordinator remove it: it
leaves the topology, and every link to or from it drops. A round that fails stops the command
before anything is removed (exit 2); run it again.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Any

from domicile.cli import connect
from domicile.client import AsyncClient, RetryPolicy
from domicile.errors import FailedPrecondition, NotFound
from domicile.topology import NodeHealth, Topology

PASSES_MAX = 5


@dataclass(frozen=True)
class Pull:
    """`node_id` pulls `namespaces` from `peer_node_id`."""

    node_id: str
    peer_node_id: str
    namespaces: tuple[str, ...]


def pulls_without(topology: Topology, node_id: str) -> list[Pull]:
    """Every link among the other nodes that carries a namespace `node_id` held, as a pull at its
    target (links go both ways, so each pair exchanges in both directions)."""
    held = {
        ns
        for link in topology.links
        if node_id in (link.source_node_id, link.target_node_id)
        for ns in link.namespaces
    }
    pulls = []
    for link in topology.links:
        if node_id in (link.source_node_id, link.target_node_id):
            continue
        shared = tuple(ns for ns in link.namespaces if ns in held)
        if shared:
            pulls.append(Pull(link.target_node_id, link.source_node_id, shared))
    return sorted(pulls, key=lambda p: (p.node_id, p.peer_node_id))


async def _remove(args: argparse.Namespace) -> None:
    async with AsyncClient(
        args.coordinator,
        deadline_s=args.deadline,
        **connect.client_options(args),
        retry=RetryPolicy(attempts_max=3),
    ) as client:
        topology = await client.topology()
        node = topology.node(args.node_id)
        if node is None:
            known = ", ".join(sorted(n.node_id for n in topology.nodes)) or "none"
            raise NotFound(f"node {args.node_id!r} is not in the topology; nodes: {known}")
        if node.health is NodeHealth.UP:
            raise FailedPrecondition(
                f"node {args.node_id} is up; stop it first (only a node that is down can be removed)"
            )
        pulls = pulls_without(topology, args.node_id)
        for number in range(1, PASSES_MAX + 1):
            moved = 0
            for pull in pulls:
                result = await client.check_consistency(
                    pull.node_id, pull.peer_node_id, pull.namespaces, repair=True, deadline_s=args.deadline
                )
                moved += sum(n.repaired for n in result.namespaces)
            print(f"recovery pass {number}: {len(pulls)} rounds, {moved} keys repaired", flush=True)
            if moved == 0:
                break
        else:
            raise FailedPrecondition(
                f"the replicas still exchanged keys after {PASSES_MAX} passes (writes going on?); "
                f"node {args.node_id} was not removed; run the command again"
            )
        revision = await client.remove_node(args.node_id)
        print(f"node {args.node_id} ({node.region}) removed at topology revision {revision}")


def remove(args: argparse.Namespace) -> int:
    asyncio.run(_remove(args))
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    nodes = sub.add_parser("nodes", help="manage the cluster's nodes")
    actions = nodes.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = actions.add_parser(
        "remove",
        parents=[common],
        help="decommission a node that is down, after its writes are recovered from its peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("node_id", metavar="NODE_ID", help="the node to remove (it must be down)")
