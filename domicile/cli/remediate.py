"""compliance remediate --plan: what removing the record copies the policy in force no longer
allows would do, region by region, from every node's compliance scan. It changes nothing.

Each copy the plan lists is one a region may not hold; the regions that may hold the record
are named with it, so a removal never touches an allowed copy. A copy that no region may hold
(its law allows none of them) is flagged: removing it would remove the record from the
cluster. Applying a plan (tombstoning those copies in the forbidden regions only) is not built.

Exit codes: 0 nothing to remove; 1 the plan removes copies; 2 a region could not be scanned
(what could be scanned is still planned) or bad input.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from domicile.cli.compliance import EXIT_INCOMPLETE, RegionScan, _collect
from domicile.cli.output import plural, print_json

EXIT_NOTHING = 0
EXIT_REMOVALS = 1


def plan_json(scans: Sequence[RegionScan]) -> dict[str, Any]:
    removals: list[dict[str, Any]] = []
    unlisted = 0
    for scan in scans:
        if scan.report is None:
            continue
        unlisted += scan.report.violations_unlisted
        for v in scan.report.violations:
            removals.append(
                {
                    "region": v.region or scan.region,
                    "namespace": v.namespace,
                    "key": v.key,
                    "rule": v.rule,
                    "stays_in": list(v.allowed_regions),
                    "removes_the_record": not v.allowed_regions,
                }
            )
    return {
        "removals": removals,
        "removals_total": sum(s.report.violations_total for s in scans if s.report is not None),
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
        lines.append(f"{scan.region}: would remove {plural(scan.report.violations_total, 'copy', 'copies')}")
        for r in mine:
            stays = ", ".join(r["stays_in"]) or "no region: this removes the record from the cluster"
            lines.append(f"  {r['namespace']}/{r['key']}  rule={r['rule'] or '-'}  stays in: {stays}")
        if scan.report.violations_unlisted:
            lines.append(
                f"  ... and {scan.report.violations_unlisted} more not listed (raise --violations-max)"
            )
    lines.append(
        f"plan: {plural(plan['removals_total'], 'copy', 'copies')} to remove; nothing was changed "
        "(applying a plan is not built)"
    )
    return "\n".join(lines)


def remediate(args: argparse.Namespace) -> int:
    scans = asyncio.run(_collect(args))
    plan = plan_json(scans)
    if args.json:
        print_json(plan)
    else:
        print(plan_text(plan, scans))
    if plan["regions_failed"]:
        return EXIT_INCOMPLETE
    return EXIT_REMOVALS if plan["removals_total"] else EXIT_NOTHING
