"""`python -m torture.recheck RUN_DIR`: a torture run's report made again from its files, without
running it again: the checker on history.jsonl and final.json, the faults counted from
faults.jsonl, the run's parameters from run.json (flags where a run has none).

With `--restart`, the run's cluster is started again from a copy of its stores (the run's
directory is left as it is) and the checks that need the daemons are made on it: the
compliance scanner on every node and the audit chain of every region. Convergence is what the
run measured (kept in final.json), or "not measured".

Writes report.json and report.md into --out (default: the run's directory) and prints the
report; exit 0 when everything checked holds, 1 when something does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import Children
from torture import checker
from torture.cluster import TortureCluster
from torture.history import load
from torture.router import FaultRouter
from torture.run import (
    audit_passed,
    outcomes,
    report_markdown,
    rewound_regions,
    scan_compliance,
    verify_audit,
    wait_linked,
)

# What a restart copies from the run's directory: everything a daemon reads at start.
RESTART_FILES = ("tls", "cluster.yaml", "pack.yaml", "coordinator", "nodes", "mongodb")


def faults_injected(path: Path) -> dict[str, int]:
    """Each fault the nemesis started, by kind (it records a "start" per fault it injects)."""
    counts: Counter[str] = Counter()
    with path.open() as lines:
        for line in lines:
            if line.strip():
                entry = json.loads(line)
                if entry["event"] == "start":
                    counts[entry["kind"]] += 1
    return dict(sorted(counts.items()))


async def restart_checks(
    run_dir: Path, engine: str, audit_timeout_s: float, rewound: frozenset[str] = frozenset()
) -> tuple[dict[str, int], dict[str, str]]:
    """The compliance scanner and the audit chain checks, on the run's cluster started again
    from a copy of its stores, with its own certificates (the audit heads are anchored to the
    keys the nodes first had)."""
    with tempfile.TemporaryDirectory(prefix="torture-recheck-") as scratch:
        root = Path(scratch)
        for name in RESTART_FILES:
            source = run_dir / name
            if source.is_dir():
                await asyncio.to_thread(shutil.copytree, source, root / name)
            elif source.exists():
                shutil.copyfile(source, root / name)
        (root / "logs").mkdir()
        router = FaultRouter(0)
        children = Children(root / "logs", cwd=Path.cwd())
        cluster = TortureCluster(root, router, children, engine, reopen=True)
        try:
            await cluster.start()
            await wait_linked(cluster)
            residency = await scan_compliance(cluster)
            audit = await verify_audit(cluster, audit_timeout_s, rewound)
        finally:
            await cluster.close()
            await router.close()
        return residency, audit


def recheck(args: argparse.Namespace) -> dict[str, Any]:
    run_dir: Path = args.run_dir
    parameters_path = run_dir / "run.json"
    parameters: dict[str, Any] = json.loads(parameters_path.read_text()) if parameters_path.exists() else {}
    started = time.monotonic()
    ops = list(load(run_dir / "history.jsonl"))
    final, regions, lww, placed, caps = checker.load_final(run_dir / "final.json")
    loaded = time.monotonic()
    findings = checker.check(ops, final, regions, lww, placed, caps)
    checked = time.monotonic()
    print(
        f"{len(ops)} operations loaded in {loaded - started:.1f} s, checked in {checked - loaded:.1f} s",
        flush=True,
    )
    engine = parameters.get("engine", args.engine)
    residency: dict[str, int] | None = None
    audit: dict[str, str] | None = None
    if args.restart:
        rewound = rewound_regions(run_dir / "faults.jsonl")
        residency, audit = asyncio.run(restart_checks(run_dir, engine, args.audit_timeout, rewound))
    convergence = json.loads((run_dir / "final.json").read_text()).get("convergence")
    report: dict[str, Any] = {
        "seed": parameters.get("seed", args.seed),
        "engine": engine,
        "duration_s": parameters.get("duration_s", args.duration),
        "quiet_s": parameters.get("quiet_s", args.quiet),
        "clients": parameters.get("clients", len({op.client for op in ops})),
        "operations": len(ops),
        "faults": faults_injected(run_dir / "faults.jsonl"),
        "outcomes": outcomes(ops),
        "checker": findings.to_json(),
        "checker_s": round(checked - loaded, 1),
        "convergence": convergence,
        "residency": residency,
        "audit": audit,
    }
    report["ok"] = (
        findings.ok
        and (convergence is None or bool(convergence["converged"]))
        and (residency is None or not any(residency.values()))
        and (audit is None or audit_passed(audit, rewound_regions(run_dir / "faults.jsonl")))
    )
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Make a torture run's report again from its files.")
    parser.add_argument("run_dir", type=Path, help="the run's directory (its --out)")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start the run's cluster again from a copy of its stores to run the compliance "
        "scanner and verify the audit chains",
    )
    parser.add_argument(
        "--audit-timeout",
        type=float,
        default=1800.0,
        help="seconds per region (default 1800: a 30-minute run's audit log is about 0.5 GB a region)",
    )
    parser.add_argument("--out", type=Path, default=None, help="where report.json and report.md go")
    # For runs made before the run wrote run.json: what the report says of the run.
    parser.add_argument("--seed", type=int, default=None, help="the run's seed, when it has no run.json")
    parser.add_argument("--duration", type=float, default=0.0, help="its seconds of faults (no run.json)")
    parser.add_argument("--quiet", type=float, default=5.0, help="its seconds healed (no run.json)")
    parser.add_argument("--engine", choices=("sqlite", "mongodb"), default="sqlite", help="(no run.json)")
    args = parser.parse_args(argv)
    for name in ("history.jsonl", "final.json", "faults.jsonl"):
        if not (args.run_dir / name).is_file():
            parser.error(f"{args.run_dir} has no {name}: give the directory a torture run wrote")
    if args.out is None:
        args.out = args.run_dir
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = recheck(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    text = report_markdown(report)
    (args.out / "report.md").write_text(text)
    print(text, flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
