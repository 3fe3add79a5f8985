"""consistency check: every pair of nodes that replicate a namespace compares its digest trees
(no record moves) and reports the keys on which the two replicas disagree and the share on which
they agree, per pair and namespace and overall.

Exit codes: 0 every pair agrees on every key; 1 some key diverges; 2 a pair could not be
checked (what could be is still printed) or bad input.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from domicile.cli import connect
from domicile.cli.output import plural, print_json
from domicile.client import AsyncClient, RetryPolicy
from domicile.errors import DomicileError, InvalidArgument
from domicile.results import PairConsistency
from domicile.topology import Topology

EXIT_AGREE = 0
EXIT_DIVERGENT = 1
EXIT_INCOMPLETE = 2
_CHECKS_INFLIGHT_MAX = 4


@dataclass(frozen=True)
class Pair:
    """Two nodes that replicate `namespaces` to each other; `node_id` runs the comparison."""

    node_id: str
    peer_node_id: str
    namespaces: tuple[str, ...]


@dataclass(frozen=True)
class PairCheck:
    pair: Pair
    result: PairConsistency | None
    error: str = ""


def pairs_of(topology: Topology, namespaces: Sequence[str]) -> list[Pair]:
    """Every unordered pair of nodes linked for some namespace (of `namespaces`, if given)."""
    known = {ns.name for ns in topology.cluster.namespaces}
    unknown = [ns for ns in namespaces if ns not in known]
    if unknown:
        raise InvalidArgument(
            f"unknown namespace {', '.join(repr(n) for n in unknown)}; namespaces: "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    shared: dict[tuple[str, str], list[str]] = {}
    for link in topology.links:
        a, b = sorted((link.source_node_id, link.target_node_id))
        # The comparison runs at the link's target, which pulls from its source; one direction
        # per pair is enough, as digests compare both ways.
        if (a, b) in shared or link.target_node_id != a:
            continue
        wanted = [ns for ns in link.namespaces if not namespaces or ns in namespaces]
        if wanted:
            shared[(a, b)] = wanted
    return [Pair(a, b, tuple(nss)) for (a, b), nss in sorted(shared.items())]


async def check_pairs(
    client: AsyncClient, pairs: Sequence[Pair], divergent_max: int, deadline_s: float
) -> list[PairCheck]:
    limit = asyncio.Semaphore(_CHECKS_INFLIGHT_MAX)

    async def one(pair: Pair) -> PairCheck:
        async with limit:
            try:
                result = await client.check_consistency(
                    pair.node_id,
                    pair.peer_node_id,
                    pair.namespaces,
                    divergent_keys_max=divergent_max,
                    deadline_s=deadline_s,
                )
            except DomicileError as exc:
                return PairCheck(pair, None, exc.message)
            return PairCheck(pair, result)

    return list(await asyncio.gather(*(one(p) for p in pairs)))


def totals(checks: Sequence[PairCheck]) -> tuple[int, int]:
    keys = divergent = 0
    for check in checks:
        if check.result is not None:
            keys += sum(n.keys for n in check.result.namespaces)
            divergent += sum(n.divergent for n in check.result.namespaces)
    return keys, divergent


def agreement(keys: int, divergent: int) -> float:
    return 1.0 if keys == 0 else (keys - divergent) / keys


def exit_code(checks: Sequence[PairCheck]) -> int:
    if any(c.result is None for c in checks):
        return EXIT_INCOMPLETE
    return EXIT_DIVERGENT if totals(checks)[1] else EXIT_AGREE


def check_text(checks: Sequence[PairCheck]) -> str:
    lines: list[str] = []
    for check in checks:
        name = f"{check.pair.node_id} <-> {check.pair.peer_node_id}"
        if check.result is None:
            lines.append(f"{name}: not checked: {check.error}")
            continue
        for n in check.result.namespaces:
            lines.append(
                f"{name} {n.namespace}: {plural(n.keys, 'key')}, {n.divergent} divergent, "
                f"agreement {n.agreement:.4%}"
            )
            lines.extend(f"  {key}" for key in n.divergent_keys)
            if n.divergent > len(n.divergent_keys):
                lines.append(f"  ... and {n.divergent - len(n.divergent_keys)} more (raise --divergent-max)")
    keys, divergent = totals(checks)
    failed = sum(1 for c in checks if c.result is None)
    total = (
        f"overall: {plural(len(checks) - failed, 'pair')} checked, {plural(keys, 'key')}, "
        f"{divergent} divergent, agreement {agreement(keys, divergent):.4%}"
    )
    if failed:
        total += f"; {plural(failed, 'pair')} could not be checked"
    lines.append(total)
    return "\n".join(lines)


def check_json(checks: Sequence[PairCheck]) -> dict[str, Any]:
    pairs = []
    for check in checks:
        r = check.result
        pairs.append(
            {
                "node_id": check.pair.node_id,
                "peer_node_id": check.pair.peer_node_id,
                "checked": r is not None,
                "error": check.error,
                "namespaces": [
                    {
                        "namespace": n.namespace,
                        "keys": n.keys,
                        "divergent": n.divergent,
                        "divergent_keys": list(n.divergent_keys),
                        "agreement": n.agreement,
                    }
                    for n in (r.namespaces if r else ())
                ],
            }
        )
    keys, divergent = totals(checks)
    return {"pairs": pairs, "keys": keys, "divergent": divergent, "agreement": agreement(keys, divergent)}


async def _collect(args: argparse.Namespace) -> list[PairCheck]:
    async with AsyncClient(
        args.coordinator,
        deadline_s=args.deadline,
        **connect.client_options(args),
        retry=RetryPolicy(attempts_max=2),
    ) as client:
        topology = await client.topology()
        pairs = pairs_of(topology, args.namespace or ())
        return await check_pairs(client, pairs, args.divergent_max, args.deadline)


def check(args: argparse.Namespace) -> int:
    checks = asyncio.run(_collect(args))
    if args.json:
        print_json(check_json(checks))
    else:
        print(check_text(checks))
    return exit_code(checks)
