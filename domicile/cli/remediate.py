"""compliance remediate --plan: what removing the record copies the policy in force no longer
allows would do, region by region, from every node's compliance scan. It changes nothing.
compliance remediate --apply: each region's node removes those copies from its own store.

Each copy the plan lists is one a region may not hold; the regions that may hold the record
are named with it, so a removal never touches an allowed copy. A copy that no region may hold
(its law allows none of them) is flagged: removing it would remove the record from the
cluster, so --apply keeps it unless --remove-last-copies is given. A copy a legal hold covers
is never removed, with or without --remove-last-copies: the plan and the receipt list it apart,
naming the hold. --apply removes without a tombstone or a change-log entry
(node/compliance/remediation.py), so nothing replicates it.

Exit codes, --plan: 0 nothing to remove; 1 the plan removes copies. --apply: 0 no violation is
left; 1 some are (kept last copies, held copies, or copies written meanwhile). Both: 2 a region
could not be scanned or remediated (the others still are), or bad input.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from domicile.cli import connect
from domicile.cli.compliance import (
    EXIT_INCOMPLETE,
    RegionScan,
    _collect,
    chosen_regions,
    held_total,
    violation_json,
)
from domicile.cli.output import plural, print_json
from domicile.client import AsyncClient, RemediationReceipt, RetryPolicy
from domicile.errors import DomicileError, InvalidArgument

EXIT_NOTHING = 0
EXIT_REMOVALS = 1


def plan_json(scans: Sequence[RegionScan]) -> dict[str, Any]:
    removals: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    unlisted = 0
    for scan in scans:
        if scan.report is None:
            continue
        unlisted += scan.report.violations_unlisted
        for v in scan.report.violations:
            entry: dict[str, Any] = {
                "region": v.region or scan.region,
                "namespace": v.namespace,
                "key": v.key,
                "rule": v.rule,
            }
            if v.held:
                # A legal hold keeps it: no remediation removes it while the hold stands.
                held.append({**entry, "hold_reason": v.hold_reason})
                continue
            removals.append(
                {**entry, "stays_in": list(v.allowed_regions), "removes_the_record": not v.allowed_regions}
            )
    total = sum(s.report.violations_total for s in scans if s.report is not None)
    return {
        "removals": removals,
        "removals_total": total - held_total(scans),
        "kept_held": held,
        "kept_held_total": held_total(scans),
        "not_listed": unlisted,
        "regions_failed": [s.region for s in scans if s.report is None],
        "applied": False,
    }


def plan_text(plan: dict[str, Any], scans: Sequence[RegionScan]) -> str:
    lines: list[str] = []
    for scan in scans:
        if scan.report is None:
            lines.append(f"{scan.region}: not scanned: {scan.error}")
            continue
        mine = [r for r in plan["removals"] if r["region"] == scan.region]
        removals = scan.report.violations_total - scan.report.violations_held
        lines.append(f"{scan.region}: would remove {plural(removals, 'copy', 'copies')}")
        for r in mine:
            stays = ", ".join(r["stays_in"]) or "no region: this removes the record from the cluster"
            lines.append(f"  {r['namespace']}/{r['key']}  rule={r['rule'] or '-'}  stays in: {stays}")
        if scan.report.violations_held:
            lines.append(
                f"  would keep {plural(scan.report.violations_held, 'copy', 'copies')} under a legal hold "
                "(never removed while the hold stands):"
            )
            for h in (h for h in plan["kept_held"] if h["region"] == scan.region):
                lines.append(f"    {h['namespace']}/{h['key']}  rule={h['rule'] or '-'}  {h['hold_reason']}")
        if scan.report.violations_unlisted:
            lines.append(
                f"  ... and {scan.report.violations_unlisted} more not listed (raise --violations-max)"
            )
    held = f", {plural(plan['kept_held_total'], 'copy', 'copies')} kept under a legal hold"
    lines.append(
        f"plan: {plural(plan['removals_total'], 'copy', 'copies')} to remove"
        f"{held if plan['kept_held_total'] else ''}; nothing was changed (--apply removes them)"
    )
    return "\n".join(lines)


def remediate(args: argparse.Namespace) -> int:
    if args.apply:
        return apply(args)
    if args.remove_last_copies or args.request_id:
        raise InvalidArgument("--remove-last-copies and --request-id go with --apply; --plan changes nothing")
    scans = asyncio.run(_collect(args))
    plan = plan_json(scans)
    if args.json:
        print_json(plan)
    else:
        print(plan_text(plan, scans))
    if plan["regions_failed"]:
        return EXIT_INCOMPLETE
    return EXIT_REMOVALS if plan["removals_total"] else EXIT_NOTHING


# One region's answer to --apply: its receipt, or why there is none.
Applied = tuple[str, RemediationReceipt | None, str]


async def _apply_all(args: argparse.Namespace) -> list[Applied]:
    # A remediation walks a whole store: the command's deadline, and no retry (a second run is
    # harmless, but the operator should see that the first did not answer).
    async with AsyncClient(
        args.coordinator,
        deadline_s=args.deadline,
        **connect.client_options(args),
        retry=RetryPolicy(attempts_max=1),
    ) as client:
        topology = await client.topology()
        regions = chosen_regions(topology.region_names(), args.region)

        async def one(region: str) -> Applied:
            try:
                receipt = await client.remediate_compliance(
                    region,
                    args.request_id,
                    remove_last_copies=args.remove_last_copies,
                    removed_max=args.violations_max,
                    deadline_s=args.deadline,
                )
            except DomicileError as exc:
                return region, None, exc.message
            return region, receipt, ""

        return list(await asyncio.gather(*(one(r) for r in regions)))


def receipts_json(results: Sequence[Applied]) -> dict[str, Any]:
    regions = []
    for region, r, error in results:
        regions.append(
            {
                "region": region,
                "applied": r is not None,
                "error": error,
                "request_id": r.request_id if r else None,
                "node_id": r.node_id if r else None,
                "policy_version": r.policy_version if r else None,
                "copies_removed": r.copies_removed if r else None,
                "versions_removed": r.versions_removed if r else None,
                "kept_last_copies": r.kept_last_copies if r else None,
                "kept_held": r.kept_held if r else None,
                "violations_after": r.violations_after if r else None,
                "receipt_audit_seq": r.receipt_audit_seq if r else None,
                "removed": [violation_json(v) for v in r.removed] if r else [],
                "held": [violation_json(v) for v in r.held] if r else [],
            }
        )
    return {
        "applied": True,
        "regions": regions,
        "copies_removed": sum(r.copies_removed for _, r, _ in results if r),
        "kept_held": sum(r.kept_held for _, r, _ in results if r),
        "violations_after": sum(r.violations_after for _, r, _ in results if r),
        "regions_failed": [region for region, r, _ in results if r is None],
    }


def receipts_text(results: Sequence[Applied]) -> str:
    lines: list[str] = []
    for region, r, error in results:
        if r is None:
            lines.append(f"{region}: not remediated: {error}")
            continue
        lines.append(
            f"{region}: removed {plural(r.copies_removed, 'copy', 'copies')} "
            f"({plural(r.versions_removed, 'version')}) under policy {r.policy_version}; "
            f"receipt {r.request_id} at audit entry {r.receipt_audit_seq} of node {r.node_id}"
        )
        for v in r.removed:
            stays = ", ".join(v.allowed_regions) or "-"
            lines.append(f"  {v.namespace}/{v.key}  rule={v.rule or '-'}  stays in: {stays}")
        if r.kept_last_copies:
            lines.append(
                f"  kept {plural(r.kept_last_copies, 'copy', 'copies')} no region may hold "
                "(--remove-last-copies removes them)"
            )
        if r.kept_held:
            lines.append(
                f"  kept {plural(r.kept_held, 'copy', 'copies')} under a legal hold "
                "(never removed while the hold stands):"
            )
            for v in r.held:
                lines.append(f"    {v.namespace}/{v.key}  rule={v.rule or '-'}  {v.hold_reason}")
        if r.violations_after:
            lines.append(f"  {plural(r.violations_after, 'violation')} left here")
    total = sum(r.copies_removed for _, r, _ in results if r)
    left = sum(r.violations_after for _, r, _ in results if r)
    lines.append(f"applied: {plural(total, 'copy', 'copies')} removed; {plural(left, 'violation')} left")
    return "\n".join(lines)


def apply(args: argparse.Namespace) -> int:
    results = asyncio.run(_apply_all(args))
    if args.json:
        print_json(receipts_json(results))
    else:
        print(receipts_text(results))
    if any(r is None for _, r, _ in results):
        return EXIT_INCOMPLETE
    return EXIT_REMOVALS if any(r.violations_after for _, r, _ in results if r) else EXIT_NOTHING
