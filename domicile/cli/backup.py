"""backup status | list | verify: what a region's backup bucket holds, read straight from the
bucket the cluster config names (nothing is asked of the cluster). Credentials come from the
usual AWS sources (environment, shared files, instance role).

Exit codes: 0 sound, 1 verify found a problem (or no backup), 2 bad input.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import TYPE_CHECKING, Any

from domicile.cli.output import print_json, table
from domicile.cluster import BackupSpec, load_cluster
from domicile.errors import InvalidArgument
from domicile.hlc import wall_ms

# boto3 is imported on use: other commands should not pay for it.
if TYPE_CHECKING:
    from domicile.backup.catalog import Catalog, Generation

EXIT_PROBLEM = 1


def add_parser(sub: Any) -> None:
    backup = sub.add_parser("backup", help="a region's backups in its S3 bucket: status, list, verify")
    actions = backup.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--region", "-r", required=True, help="the region whose bucket to read")
    common.add_argument(
        "--config",
        default="deploy/cluster.yaml",
        help="cluster config naming the bucket (default: %(default)s)",
    )
    common.add_argument("--node", help="only this node's backups (default: every node of the bucket)")
    common.add_argument("--json", action="store_true", help="print JSON")
    actions.add_parser(
        "status", parents=[common], help="per node: newest generation, newest backed-up write and its age"
    )
    actions.add_parser("list", parents=[common], help="every generation with its objects and positions")
    actions.add_parser(
        "verify",
        parents=[common],
        help="download and check every object; report the recovery point and the restorable window",
    )


def backup_spec(config: str, region: str) -> BackupSpec:
    cluster = load_cluster(config)
    spec = cluster.region(region)
    if spec is None:
        raise InvalidArgument(f"unknown region {region!r}; configured: {', '.join(cluster.region_names())}")
    if spec.backup is None:
        raise InvalidArgument(f"region {region} has no backup bucket in {config} (regions[].backup)")
    return spec.backup


def _catalog(args: argparse.Namespace) -> tuple[Catalog, list[str]]:
    from domicile.backup.bucket import Bucket
    from domicile.backup.catalog import Catalog

    spec = backup_spec(args.config, args.region)
    catalog = Catalog(Bucket(spec), spec.prefix)
    nodes = [args.node] if args.node else catalog.nodes()
    return catalog, nodes


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="milliseconds")


def _age_s(ms: int, now_ms: int) -> float:
    return round((now_ms - ms) / 1000, 3) if ms else -1.0


def status(args: argparse.Namespace) -> int:
    catalog, nodes = _catalog(args)
    now = wall_ms()
    rows: list[dict[str, Any]] = []
    for node in nodes:
        complete = [g for g in catalog.generations(node) if g.manifest is not None]
        newest = complete[-1] if complete else None
        newest_ms = catalog.newest_write_ms(newest) if newest else 0
        rows.append(
            {
                "node": node,
                "generations": len(complete),
                "newest_generation": newest.name if newest else "",
                "last_lsn": newest.last_lsn if newest else 0,
                "newest_write": _when(newest_ms),
                "newest_write_age_s": _age_s(newest_ms, now),
            }
        )
    if args.json:
        print_json({"region": args.region, "nodes": rows})
    else:
        print(table(list(rows[0]) if rows else ["node"], [list(r.values()) for r in rows]))
    return 0 if rows else EXIT_PROBLEM


def _generation_row(g: Generation) -> dict[str, Any]:
    m = g.manifest
    return {
        "node": g.node_id,
        "generation": g.name,
        "complete": m is not None,
        "snapshot_finished": _when(m.finished_ms) if m else "-",
        "states": sum(p.rows for p in m.parts) if m else 0,
        "base_lsn": m.base_lsn if m else 0,
        "segments": len(g.segments),
        "last_lsn": g.last_lsn,
        "objects": g.objects,
        "bytes": g.bytes,
    }


def list_generations(args: argparse.Namespace) -> int:
    catalog, nodes = _catalog(args)
    rows = [_generation_row(g) for node in nodes for g in catalog.generations(node)]
    if args.json:
        print_json({"region": args.region, "generations": rows})
    elif rows:
        print(table(list(rows[0]), [list(r.values()) for r in rows]))
    else:
        print(f"no backups in bucket {catalog.bucket.name}")
    return 0


def verify(args: argparse.Namespace) -> int:
    catalog, nodes = _catalog(args)
    now = wall_ms()
    results: list[dict[str, Any]] = []
    ok = bool(nodes)
    for node in nodes:

        def progress(line: str, node: str = node) -> None:
            print(f"{node}: {line}", file=sys.stderr)

        report = catalog.verify(node, progress=progress)
        ok = ok and report.ok
        results.append(
            {
                "node": node,
                "ok": report.ok,
                "generations": report.generations,
                "objects": report.objects,
                "bytes": report.bytes,
                "states": report.states,
                "log_entries": report.log_entries,
                "restorable_from": _when(report.window_start_ms),
                "restorable_to": _when(report.window_end_ms),
                "recovery_point_age_s": _age_s(report.window_end_ms, now),
                "problems": report.problems,
            }
        )
    if args.json:
        print_json({"region": args.region, "ok": ok, "nodes": results})
    else:
        for r in results:
            verdict = "OK" if r["ok"] else "DAMAGED"
            print(
                f"{r['node']}: {verdict}: {r['generations']} generations, {r['objects']} objects, "
                f"{r['bytes']} bytes, {r['states']} states, {r['log_entries']} log entries"
            )
            print(f"  restorable from {r['restorable_from']} to {r['restorable_to']}")
            print(f"  newest backed-up write {r['recovery_point_age_s']} s ago")
            for problem in r["problems"]:
                print(f"  problem: {problem}")
        if not results:
            print(f"no backups in bucket {catalog.bucket.name}")
    return 0 if ok else EXIT_PROBLEM
