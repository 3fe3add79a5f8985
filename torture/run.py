"""`python -m torture.run --seed S --duration SECONDS`: a Jepsen-style run against a real cluster.

1. Starts a coordinator and three nodes (mutual TLS) behind the fault router.
2. Runs the workload and the nemesis together for the duration, recording the history.
3. Heals everything (network, paused and killed daemons) and waits until every replica in scope
   holds the same versions of every key, timing each key's convergence.
4. Reads the final state, runs the checker, the compliance scanner on every node and the audit
   chain check of every region, and prints the report. Exit 0 when everything holds, 1 when
   something does not, 2 when the run itself could not be made.

Everything lands in --out: history.jsonl, faults.jsonl, final.json, report.json, report.md and the
daemons' logs. The seed is printed first; the same seed replays the same schedule of operations
and faults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.procs import Children
from domicile.cluster import SIBLINGS_MAX_DEFAULT
from domicile.v1 import storage_node_pb2 as spb
from torture import checker
from torture.cluster import LWW, PEOPLE, SIBLINGS, TortureCluster
from torture.history import History, Op, Seen
from torture.nemesis import FAULT_KINDS, REWOUND_EVENT, UNSAFE_KINDS, Nemesis
from torture.router import FaultRouter
from torture.workload import INSERT_PREFIX, KEYS_PER_NAMESPACE, SUBJECTS, Workload, seen_of

LINK_TIMEOUT_S = 60.0
POLL_S = 0.1
READ_DEADLINE_S = 3.0
SCAN_PAGE = 500
VERIFY_CALL_S = 60.0  # the least time one `domicile audit verify` is given
DURATION_MAX_S = 24 * 3600
# The torture namespaces keep the default cap on live versions per key.
SIBLINGS_MAX = {SIBLINGS: SIBLINGS_MAX_DEFAULT, PEOPLE: SIBLINGS_MAX_DEFAULT}


@dataclass
class Convergence:
    converged: bool
    seconds: list[float]  # per key, from the heal to agreement
    divergent: list[str]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_linked(cluster: TortureCluster) -> None:
    """Until every node has a connected outbound link to every other node."""
    deadline = time.monotonic() + LINK_TIMEOUT_S
    others = len(cluster.nodes) - 1
    while True:
        statuses = [await cluster.status(region) for region in cluster.nodes]
        if all(s is not None and sum(link.connected for link in s.outbound) >= others for s in statuses):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes did not link within {LINK_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.2)


def all_keys() -> dict[str, list[str]]:
    plain = [f"k{i}" for i in range(KEYS_PER_NAMESPACE)]
    people = [f"{subject}-{key}" for subject, _ in SUBJECTS for key in plain]
    return {SIBLINGS: plain, LWW: plain, PEOPLE: people}


async def _scan(cluster: TortureCluster, region: str, namespace: str, prefix: str) -> dict[str, Seen]:
    found: dict[str, Seen] = {}
    token = ""
    while True:
        request = spb.ScanRequest(
            namespace=namespace, key_prefix=prefix, page_size=SCAN_PAGE, page_token=token
        )
        page: spb.ScanResponse = await cluster.direct(region).Scan(request, timeout=READ_DEADLINE_S)
        for item in page.items:
            found[item.key] = seen_of(item)
        token = page.next_page_token
        if not token:
            return found


async def read_state(
    cluster: TortureCluster, namespaces: dict[str, list[str]], inserts: bool
) -> dict[str, dict[str, dict[str, Seen]]]:
    """What every node holds for `namespaces`' keys, and with `inserts`, for every inserted key
    any node returns. A key a node does not return is empty there."""
    state: dict[str, dict[str, dict[str, Seen]]] = {}
    for namespace, keys in namespaces.items():
        for key in keys:
            for region in cluster.nodes:
                response: spb.GetResponse = await cluster.direct(region).Get(
                    spb.GetRequest(namespace=namespace, key=key), timeout=READ_DEADLINE_S
                )
                state.setdefault(namespace, {}).setdefault(key, {})[region] = seen_of(response)
    if inserts:
        scanned = {region: await _scan(cluster, region, SIBLINGS, INSERT_PREFIX) for region in cluster.nodes}
        for key in set().union(*scanned.values()):
            state.setdefault(SIBLINGS, {})[key] = {r: scanned[r].get(key, Seen()) for r in cluster.nodes}
    return state


def _agree(replicas: dict[str, Seen]) -> bool:
    views = {json.dumps(sorted((d, v) for d, v, _h in seen.live)) for seen in replicas.values()}
    return len(views) == 1


async def await_convergence(cluster: TortureCluster, healed: float, timeout_s: float) -> Convergence:
    """Polls every replicated key on every node until all agree; a key's time is from `healed`
    (monotonic: the last write, made on the healed cluster) to the poll from which its replicas
    agreed."""
    compared = {SIBLINGS: all_keys()[SIBLINGS], LWW: all_keys()[LWW]}
    agreed_since: dict[str, float] = {}
    while True:
        now = time.monotonic()
        try:
            state = await read_state(cluster, compared, inserts=True)
        except grpc.aio.AioRpcError:
            state = {}  # a node is still starting
        if state:
            for namespace, keys in state.items():
                for key, replicas in keys.items():
                    name = f"{namespace}/{key}"
                    if _agree(replicas):
                        agreed_since.setdefault(name, now - healed)
                    else:
                        agreed_since.pop(name, None)
        everything = [f"{ns}/{k}" for ns, keys in state.items() for k in keys]
        missing = [name for name in everything if name not in agreed_since]
        if state and not missing:
            return Convergence(True, [agreed_since[n] for n in everything], [])
        if now - healed > timeout_s:
            return Convergence(False, list(agreed_since.values()), missing)
        await asyncio.sleep(POLL_S)


async def scan_compliance(cluster: TortureCluster) -> dict[str, int]:
    found = {}
    for region in cluster.nodes:
        response: spb.ScanComplianceResponse = await cluster.direct(region).ScanCompliance(
            spb.ScanComplianceRequest(violations_max=10), timeout=30.0
        )
        found[region] = int(response.violations_total)
    return found


def run_check(argv: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Runs a check's command: its exit code and output, or no code and a message saying so
    when it did not finish within `timeout_s` (a failed check, not the end of the run)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"{' '.join(argv[1:4])} did not finish within {timeout_s:g} s"
    return done.returncode, (done.stdout + done.stderr).strip()


# What the audit check of a node put back on an older copy finds when the node did not know it
# (a node that finds it at start starts a new chain and verifies as any other): the copy lacks
# entries its head on record covers, and the entries written since take their places
# (coordinator/audit_heads.py keeps the head that proves it). Any other problem is a failure
# like in any region.
REWIND_LOSS_KINDS = frozenset({"truncated", "rewritten"})
REWIND_LOSS = "entries lost to a rewind"
# How much of a failed check's output (its JSON report) the report quotes.
AUDIT_OUTPUT_CHARS = 2000


async def verify_audit(
    cluster: TortureCluster, timeout_s: float, rewound: frozenset[str] = frozenset()
) -> dict[str, str]:
    """`domicile audit verify` of every region, retried until the head covers the log (a head is
    exported a moment after the last entries). "ok", or for a region in `rewound` whose log
    lost anchored entries (and has no other problem) a line starting with REWIND_LOSS, or the
    check's output."""
    results = {}
    for region in cluster.nodes:
        deadline = time.monotonic() + timeout_s
        while True:
            argv = [
                sys.executable,
                "-m",
                "domicile.cli",
                "audit",
                "verify",
                "--json",
                "--region",
                region,
                *cluster.cli_args(),
            ]
            # A long run's audit log is hundreds of megabytes: one check may take minutes.
            code, output = await asyncio.to_thread(run_check, argv, max(VERIFY_CALL_S, timeout_s))
            lost = lost_to_rewind(output) if region in rewound and code else None
            if lost is not None:
                results[region] = lost  # what the copy lacks stays lost: no use waiting
                break
            if code is None or code == 0 or time.monotonic() > deadline:
                results[region] = "ok" if code == 0 else output[-AUDIT_OUTPUT_CHARS:]
                break
            await asyncio.sleep(1.0)
    return results


def lost_to_rewind(output: str) -> str | None:
    """From `domicile audit verify --json` output: a REWIND_LOSS line when the log is anchored and
    its only problems are anchored entries missing or replaced; None otherwise."""
    try:
        report, _ = json.JSONDecoder().raw_decode(output)
    except ValueError:
        return None
    if not isinstance(report, dict) or not report.get("anchored") or report.get("problems_omitted"):
        return None
    problems = report.get("problems") or []
    if not problems or not {p.get("kind") for p in problems} <= REWIND_LOSS_KINDS:
        return None
    head = report.get("head") or {}
    return f"{REWIND_LOSS}: the head on record covers {head.get('size')} entries; " + "; ".join(
        f"{p.get('kind')} at {p.get('seq')}: {p.get('message')}" for p in problems
    )


def audit_passed(audit: dict[str, str], rewound: frozenset[str]) -> bool:
    """Every chain verified, but for rewound regions' losses (verify_audit classifies those)."""
    return all(v == "ok" or (r in rewound and v.startswith(REWIND_LOSS)) for r, v in audit.items())


def rewound_regions(faults_path: Path) -> frozenset[str]:
    """The regions a run's rewinds put back on an older copy (its faults log)."""
    if not faults_path.exists():
        return frozenset()
    with faults_path.open() as lines:
        entries = [json.loads(line) for line in lines if line.strip()]
    return frozenset(e["detail"] for e in entries if e["event"] == REWOUND_EVENT)


def outcomes(ops: list[Op]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter[str]] = {}
    for op in ops:
        table.setdefault(op.f, Counter())[op.outcome] += 1
    return {f: dict(counts) for f, counts in sorted(table.items())}


def convergence_summary(convergence: Convergence) -> dict[str, Any]:
    return {
        "converged": convergence.converged,
        "p50_s": percentile(convergence.seconds, 0.5),
        "p99_s": percentile(convergence.seconds, 0.99),
        "divergent": convergence.divergent,
    }


def report_markdown(report: dict[str, Any]) -> str:
    """The report's table. A check the run did not get to (a report remade from a run's files
    by `torture.recheck`) reads "not measured"."""
    missing = "not measured"
    audit: dict[str, str] | None = report["audit"]
    residency: dict[str, int] | None = report["residency"]
    convergence: dict[str, Any] | None = report["convergence"]
    timing = (
        f"{convergence['p50_s']:.2f} s / {convergence['p99_s']:.2f} s" if convergence is not None else missing
    )
    verified = missing
    if audit is not None:
        lost = sum(v.startswith(REWIND_LOSS) for v in audit.values())
        verified = f"{sum(v == 'ok' for v in audit.values())} of {len(audit)}" + (
            f"; {lost} lost entries to a rewind of their node (expected)" if lost else ""
        )
    lines = [
        f"# Torture run, seed {report['seed']}",
        "",
        f"{report['duration_s']:.0f} s of faults then {report['quiet_s']:.0f} s healed, "
        f"{report['clients']} clients, {report['operations']} operations, engine {report['engine']}.",
        "",
        "| fault | injected |",
        "| --- | --- |",
        *(f"| {kind} | {count} |" for kind, count in report["faults"].items()),
        "",
        "| operation | ok | fail | info |",
        "| --- | --- | --- | --- |",
        *(
            f"| {f} | {c.get('ok', 0)} | {c.get('fail', 0)} | {c.get('info', 0)} |"
            for f, c in report["outcomes"].items()
        ),
        "",
        "| check | result |",
        "| --- | --- |",
        f"| acknowledged writes checked | {report['checker']['acknowledged_writes']} |",
        f"| acknowledged writes lost | {len(report['checker']['lost'])} |",
        f"| resurrections | {len(report['checker']['resurrected'])} |",
        f"| phantom values | {len(report['checker']['phantoms'])} |",
        f"| dot reuse | {len(report['checker']['dot_reuse'])} |",
        f"| divergent keys | {len(report['checker']['divergent'])} |",
        f"| converged after heal | {convergence['converged'] if convergence is not None else missing} |",
        f"| convergence after the last write, p50 / p99 | {timing} |",
        f"| residency violations (scanner) | "
        f"{sum(residency.values()) if residency is not None else missing} |",
        f"| audit chains verified | {verified} |",
        f"| most siblings on a key (final state) | {report['checker']['max_siblings']} |",
        f"| reads or replicas over the sibling cap, one writer's versions | "
        f"{len(report['checker']['over_cap'])} |",
        f"| reads or replicas over the cap, several writers' versions merged (allowed) | "
        f"{report['checker']['over_namespace_cap']} |",
        "",
        *audit_failures(audit),
        f"Result: **{'PASS' if report['ok'] else 'FAIL'}**",
    ]
    return "\n".join(lines) + "\n"


def audit_failures(audit: dict[str, str] | None) -> list[str]:
    """What each region's failed audit check printed (its last lines), so that a failed run in
    CI says why without its files."""
    lines = []
    for region, output in (audit or {}).items():
        if output.startswith(REWIND_LOSS):
            lines += [f"Audit check of {region}, its node put back on an older copy: {output}", ""]
        elif output != "ok":
            lines += [f"Audit check of {region} failed:", "", "```", output, "```", ""]
    return lines


def run_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """What a report says of the run besides its results (`run.json`, read by `torture.recheck`)."""
    return {
        "seed": args.seed,
        "engine": args.engine,
        "duration_s": args.duration,
        "quiet_s": args.quiet,
        "clients": args.clients,
    }


async def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    router = FaultRouter(args.seed)
    children = Children(out / "logs", cwd=Path.cwd())
    cluster = TortureCluster(out, router, children, args.engine)
    history = History(out / "history.jsonl")
    workload = Workload(cluster, history, args.seed, args.clients)
    nemesis = Nemesis(cluster, args.seed, out / "faults.jsonl", tuple(args.faults), history, workload.t0)
    (out / "run.json").write_text(json.dumps(run_parameters(args), indent=2))
    started = time.monotonic()
    try:
        await cluster.start()
        await wait_linked(cluster)
        print(
            f"cluster up and linked in {time.monotonic() - started:.1f} s; {args.duration:g} s of faults",
            flush=True,
        )
        stop_faults, stop_clients = asyncio.Event(), asyncio.Event()
        clients = asyncio.create_task(workload.run(stop_clients))
        faults = asyncio.create_task(nemesis.run(stop_faults))
        await asyncio.sleep(args.duration)
        stop_faults.set()
        await faults
        await nemesis.heal_everything()
        # The clients go on for a while on the healed cluster: writes made after a fault (after a
        # restart, above all) are where some bugs show.
        await asyncio.sleep(args.quiet)
        if nemesis.unchecked_rewinds:
            shown = sum(r.provoked for r in nemesis.unchecked_rewinds)
            print(
                f"unchecked rewinds: {len(nemesis.unchecked_rewinds)}, after which the node wrote "
                f"again a key it wrote since its copy: {shown}",
                flush=True,
            )
        stop_clients.set()
        await clients
        written = time.monotonic()
        print(f"healed; {len(history.ops)} operations; waiting for convergence", flush=True)
        convergence = await await_convergence(cluster, written, args.convergence_timeout)
        state = await read_state(cluster, all_keys(), inserts=True)
        final = {
            "regions": list(cluster.nodes),
            "lww_namespaces": [LWW],
            "placed_namespaces": [PEOPLE],
            "siblings_max": SIBLINGS_MAX,
            # Not the checker's input: kept so that `torture.recheck` can remake the report.
            "convergence": convergence_summary(convergence),
            "state": {
                ns: {
                    k: {r: {"vv": s.vv, "dots": s.dots, "live": s.live} for r, s in regions.items()}
                    for k, regions in keys.items()
                }
                for ns, keys in state.items()
            },
        }
        (out / "final.json").write_text(json.dumps(final))
        print(
            f"converged in {time.monotonic() - written:.1f} s; scanning and verifying audit chains",
            flush=True,
        )
        residency = await scan_compliance(cluster)
        audit = await verify_audit(cluster, args.audit_timeout, frozenset(nemesis.rewound))
        findings = checker.check(history.ops, state, list(cluster.nodes), [LWW], [PEOPLE], SIBLINGS_MAX)
        print(f"checks done {time.monotonic() - written:.1f} s after the last write", flush=True)
    finally:
        history.close()
        nemesis.close()
        await workload.close()
        await cluster.close()
        await router.close()
    report: dict[str, Any] = {
        **run_parameters(args),
        "operations": len(history.ops),
        "faults": dict(sorted(nemesis.injected.items())),
        "outcomes": outcomes(history.ops),
        "checker": findings.to_json(),
        "convergence": convergence_summary(convergence),
        "residency": residency,
        "audit": audit,
    }
    report["ok"] = (
        findings.ok
        and convergence.converged
        and not any(residency.values())
        and audit_passed(audit, frozenset(nemesis.rewound))
    )
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = report_markdown(report)
    (out / "report.md").write_text(text)
    print(text, flush=True)
    if not report["ok"]:
        print(f"FAILED; replay with: python -m torture.run --seed {args.seed} --duration {args.duration:g}")
        print(f"details in {out}/report.json", flush=True)
    return 0 if report["ok"] else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Jepsen-style torture run against a real cluster.")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random, printed)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults (default 60)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients (default 6)")
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated fault kinds (default all: {','.join(FAULT_KINDS)}); "
        f"{','.join(UNSAFE_KINDS)} is the negative control: a fault the checker must catch",
    )
    parser.add_argument(
        "--engine",
        choices=("sqlite", "mongodb"),
        default="sqlite",
        help="the nodes' store: sqlite (embedded, default) or mongodb (a SecantusDB the run starts)",
    )
    parser.add_argument(
        "--quiet", type=float, default=5.0, help="seconds the clients go on after the heal (default 5)"
    )
    parser.add_argument("--convergence-timeout", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument(
        "--audit-timeout",
        type=float,
        default=30.0,
        help="seconds to retry each region's audit check (default 30)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="directory for the run's files (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.duration <= DURATION_MAX_S:
        parser.error(f"--duration must be more than 0 and at most {DURATION_MAX_S} s")
    if not 0 <= args.quiet <= 600:
        parser.error("--quiet must be 0 to 600 s")
    if not 1 <= args.clients <= 64:
        parser.error("--clients must be 1 to 64")
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(args.faults) - set(FAULT_KINDS) - set(UNSAFE_KINDS))
    if unknown or not args.faults:
        parser.error(f"--faults: unknown {unknown}; known: {', '.join(FAULT_KINDS + UNSAFE_KINDS)}")
    if args.engine == "mongodb":
        # A node's store is then its MongoDB database, not a directory the run can copy back.
        args.faults = [f for f in args.faults if not f.startswith("rewind")]
        if not args.faults:
            parser.error("--faults: the rewind faults copy a node's data directory back; with --engine "
                         "mongodb its store is a database: choose other kinds")  # fmt: skip
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix=f"torture-{args.seed}-"))
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"torture seed {args.seed} (replay: --seed {args.seed}); files in {args.out}", flush=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return asyncio.run(run(args))
    except (RuntimeError, OSError) as error:
        print(f"torture run could not be made: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
