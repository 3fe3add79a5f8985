"""compliance scan: every region's node checks the record copies it holds against the policy in
force and reports those the policy does not allow there. Nothing is moved or deleted. A copy a
legal hold covers is still a violation; it is shown with its hold, which keeps a remediation
from removing it.

Exit codes: 0 no violation; 1 violations found; 2 a region could not be scanned (what could be
scanned is still printed) or bad input.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from domicile.cli import connect
from domicile.cli.output import plural, print_json
from domicile.client import AsyncClient, ComplianceReport, ComplianceViolation, RetryPolicy
from domicile.errors import DomicileError, InvalidArgument

EXIT_CLEAN = 0
EXIT_VIOLATIONS = 1
EXIT_INCOMPLETE = 2
# Regions are scanned concurrently (one node each), at most this many at a time.
_SCANS_INFLIGHT_MAX = 8


@dataclass(frozen=True)
class RegionScan:
    region: str
    report: ComplianceReport | None
    error: str = ""


async def scan_regions(
    client: AsyncClient, regions: Sequence[str], violations_max: int, deadline_s: float
) -> list[RegionScan]:
    limit = asyncio.Semaphore(_SCANS_INFLIGHT_MAX)

    async def one(region: str) -> RegionScan:
        async with limit:
            try:
                report = await client.scan_compliance(region, violations_max, deadline_s=deadline_s)
            except DomicileError as exc:
                return RegionScan(region, None, exc.message)
            return RegionScan(region, report)

    return list(await asyncio.gather(*(one(r) for r in regions)))


def chosen_regions(known: Sequence[str], asked: Sequence[str] | None) -> list[str]:
    if not asked:
        return list(known)
    unknown = [r for r in asked if r not in known]
    if unknown:
        raise InvalidArgument(
            f"unknown region {', '.join(repr(r) for r in unknown)}; regions: {', '.join(known) or 'none'}"
        )
    return list(dict.fromkeys(asked))


def exit_code(scans: Sequence[RegionScan]) -> int:
    if any(s.report is None for s in scans):
        return EXIT_INCOMPLETE
    if any(s.report is not None and not s.report.compliant for s in scans):
        return EXIT_VIOLATIONS
    return EXIT_CLEAN


def _totals(scans: Sequence[RegionScan]) -> tuple[int, int, int]:
    reports = [s.report for s in scans if s.report is not None]
    return (
        sum(r.versions_checked for r in reports),
        sum(r.violations_total for r in reports),
        sum(1 for s in scans if s.report is None),
    )


def held_total(scans: Sequence[RegionScan]) -> int:
    return sum(s.report.violations_held for s in scans if s.report is not None)


def held_note(held: int) -> str:
    return f" ({held} under a legal hold)" if held else ""


def violation_lines(v: ComplianceViolation) -> list[str]:
    allowed = ", ".join(v.allowed_regions) or "no region"
    return [
        f"  {v.namespace}/{v.key}  region={v.region} origin={v.origin_region or '-'} "
        f"classification={v.classification.label} jurisdiction={v.subject_jurisdiction or '-'} "
        f"rule={v.rule or '-'}",
        f"    reason: {v.reason}",
        f"    allowed regions: {allowed}",
        *([f"    held: {v.hold_reason} (no remediation removes it while the hold stands)"] if v.held else []),
    ]


def scan_text(scans: Sequence[RegionScan]) -> str:
    lines: list[str] = []
    for scan in scans:
        r = scan.report
        if r is None:
            lines.append(f"{scan.region}: not scanned: {scan.error}")
            continue
        lines.append(
            f"{scan.region}: {plural(r.versions_checked, 'version')} checked, "
            f"{plural(r.violations_total, 'violation')}{held_note(r.violations_held)} "
            f"(policy {r.policy_version or '-'}, node {r.node_id})"
        )
        for v in r.violations:
            lines.extend(violation_lines(v))
        if r.violations_unlisted:
            lines.append(f"  ... and {r.violations_unlisted} more not listed (raise --violations-max)")
    checked, violations, failed = _totals(scans)
    total = (
        f"total: {plural(len(scans) - failed, 'region')} scanned, {plural(checked, 'version')} checked, "
        f"{plural(violations, 'violation')}{held_note(held_total(scans))}"
    )
    if failed:
        total += f"; {plural(failed, 'region')} could not be scanned"
    lines.append(total)
    return "\n".join(lines)


def violation_json(v: ComplianceViolation) -> dict[str, Any]:
    return {
        "namespace": v.namespace,
        "key": v.key,
        "region": v.region,
        "origin_region": v.origin_region,
        "classification": v.classification.label,
        "subject_jurisdiction": v.subject_jurisdiction,
        "rule": v.rule,
        "reason": v.reason,
        "allowed_regions": list(v.allowed_regions),
        "hold_reason": v.hold_reason,
    }


def scan_json(scans: Sequence[RegionScan]) -> dict[str, Any]:
    regions = []
    for scan in scans:
        r = scan.report
        regions.append(
            {
                "region": scan.region,
                "scanned": r is not None,
                "error": scan.error,
                "node_id": r.node_id if r else None,
                "policy_version": r.policy_version if r else None,
                "versions_checked": r.versions_checked if r else None,
                "violations_total": r.violations_total if r else None,
                "violations_held": r.violations_held if r else None,
                "violations": [violation_json(v) for v in r.violations] if r else [],
            }
        )
    checked, violations, failed = _totals(scans)
    return {
        "regions": regions,
        "versions_checked": checked,
        "violations_total": violations,
        "violations_held": held_total(scans),
        "regions_failed": [s.region for s in scans if s.report is None],
        "compliant": failed == 0 and violations == 0,
    }


async def _collect(args: argparse.Namespace) -> list[RegionScan]:
    # Each scan walks a whole store: it gets the command's deadline, and one retry at most.
    async with AsyncClient(
        args.coordinator,
        deadline_s=args.deadline,
        **connect.client_options(args),
        retry=RetryPolicy(attempts_max=2),
    ) as client:
        topology = await client.topology()
        regions = chosen_regions(topology.region_names(), args.region)
        return await scan_regions(client, regions, args.violations_max, args.deadline)


def scan(args: argparse.Namespace) -> int:
    scans = asyncio.run(_collect(args))
    if args.json:
        print_json(scan_json(scans))
    else:
        print(scan_text(scans))
    return exit_code(scans)
