"""Argument parsing and dispatch for the `domicile` command.

Exit codes: 0 success; 1 `get` found nothing, `up` lost a child, `policy explain` or
`authz explain` refused,
`audit verify` found a problem or no exported head, `compliance scan` found a violation,
`consistency check` found a divergent key,
`erase --wait` ended with the erasure still open; 2 an error (printed as `error: <message>` on
stderr) or a usage mistake, including an `export` that could not read every region.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from domicile.cli import authz, backup, catalog, certs, connect, nodes
from domicile.client import DEFAULT_COORDINATOR
from domicile.errors import DomicileError, PlacementRefused
from domicile.model import Classification
from domicile.wire.limits import (
    AUDIT_TAIL_ENTRIES_MAX,
    PUT_BATCH_RECORDS_MAX,
    SUBJECT_REQUESTS_LIMIT_MAX,
    VIOLATIONS_MAX_DEFAULT,
    VIOLATIONS_MAX_LIMIT,
)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DAEMONS = ("node", "coordinator")
# Commands of the node package that run in a process of their own (the library imports no daemon).
NODE_TOOLS = {"restore": "node.backup.restore"}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


def _classification(text: str) -> str:
    allowed = [c.label for c in Classification if c is not Classification.UNSPECIFIED]
    if text.lower() not in allowed:
        raise argparse.ArgumentTypeError(f"unknown classification {text!r}; allowed: {', '.join(allowed)}")
    return text.lower()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domicile",
        description="Domicile: a record store that keeps every record in the jurisdiction it belongs to.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = _common_options(deadline_s=5.0)
    record = argparse.ArgumentParser(add_help=False, parents=[common])
    record.add_argument("--namespace", "-n", required=True, help="namespace (dataset) name")
    record.add_argument("--region", "-r", help="send to this region instead of routing by the topology")

    p = sub.add_parser(
        "up",
        help="run a local cluster: the coordinator and one node per region",
        description="Start the coordinator and one node per region of the cluster config as child "
        "processes, wait until they are healthy, print their endpoints and run until Ctrl-C.",
    )
    p.add_argument("--config", default="deploy/cluster.yaml", help="cluster config (default: %(default)s)")
    p.add_argument("--data-dir", default=".domicile", help="data and logs directory (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument(
        "--base-port",
        type=_port,
        default=7400,
        help="coordinator port; region i listens on base-port + i (default: %(default)s)",
    )
    p.add_argument(
        "--metrics-base-port",
        type=_port,
        default=9400,
        help="metrics port of the coordinator, then one per region; 0 disables (default: %(default)s)",
    )
    p.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    p.add_argument(
        "--tiers",
        action="store_true",
        help="run every region on the MongoDB engine, over a SecantusDB server started as a child "
        "process on the port after the last region's (data in DATA_DIR/mongodb)",
    )
    p.add_argument(
        "--nodes-per-region",
        type=int,
        default=1,
        metavar="N",
        help="daemons per region over the region's one MongoDB database (with --tiers); the first is "
        "named after the region, the others REGION-2, REGION-3, ... (default: %(default)s)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="run every process in plaintext, without authentication (development only); by default "
        "a development CA and certificates are made in DATA_DIR/tls and every port uses mutual TLS",
    )
    p.add_argument(
        "--startup-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for every process to be healthy (default: %(default)s)",
    )
    p.add_argument(
        "--stop-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="how long each process may take to stop before it is killed (default: %(default)s)",
    )

    for daemon in DAEMONS:
        sub.add_parser(
            daemon,
            help=f"run the {daemon} daemon (the remaining arguments go to `python -m {daemon}`)",
            add_help=False,
        )

    sub.add_parser(
        "restore",
        help="rebuild a node's store from its region's backup bucket, as a new incarnation "
        "(`domicile restore --help`)",
        add_help=False,
    )

    p = sub.add_parser("put", parents=[record], help="write a record")
    p.add_argument("--key", "-k", required=True)
    value = p.add_mutually_exclusive_group(required=True)
    value.add_argument("--value", "-v", help="the value, as UTF-8 text")
    value.add_argument("--value-file", metavar="PATH", help="read the value's bytes from a file")
    p.add_argument("--subject-id", default="", help="the data subject the record is about")
    p.add_argument(
        "--subject-jurisdiction", default="", metavar="CC", help="ISO 3166 code of the subject, e.g. DE"
    )
    p.add_argument("--classification", type=_classification, help="default: the namespace's")
    p.add_argument("--content-type", default="", help="MIME type of the value")
    p.add_argument("--context", help="context printed by an earlier get: the versions this write supersedes")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser(
        "load",
        parents=[record],
        help="write the records of a JSON Lines file in batches (PutBatch)",
        description="Each line: a JSON object with key and value (text) or value_base64, and "
        "optionally subject_id, subject_jurisdiction, classification, content_type, request_id. "
        "Bad lines and refused records are reported with their line numbers; the others are "
        "written. Exit 0 when every line was written, 1 when some were not, 2 on error.",
    )
    p.add_argument("file", metavar="FILE.jsonl")
    p.add_argument(
        "--batch",
        type=int,
        default=PUT_BATCH_RECORDS_MAX,
        help="records per PutBatch call (1 to %(default)s)",
    )

    p = sub.add_parser(
        "get",
        parents=[record],
        help="read a record (exit 1 when not found)",
        description="Print the value; concurrent siblings print one per line as DOT<TAB>VALUE. "
        "Exit 0 when found, 1 when not found, 2 on error.",
    )
    p.add_argument("--key", "-k", required=True)
    p.add_argument("--json", action="store_true", help="print versions, dots and context as JSON")

    p = sub.add_parser("delete", parents=[record], help="delete a record (writes a tombstone)")
    p.add_argument("--key", "-k", required=True)
    p.add_argument("--context", help="delete only the versions of this context (from get)")
    p.add_argument(
        "--subject-id",
        default="",
        help="the record's data subject; used only when the node holds no version of the record",
    )
    p.add_argument(
        "--subject-jurisdiction",
        default="",
        metavar="CC",
        help="ISO 3166 code of the subject (e.g. DE); used only when the node holds no version of the "
        "record, and needed then for personal data",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser(
        "scan",
        parents=[record],
        help="list records by key prefix",
        description="Print KEY<TAB>VALUE per live version in key order; --json prints one JSON "
        "object per record per line.",
    )
    p.add_argument("--prefix", "-p", default="", help="only keys starting with this")
    p.add_argument("--limit", type=_positive_int, help="at most this many records")
    p.add_argument("--json", action="store_true", help="JSON Lines output")

    p = sub.add_parser(
        "status", parents=[common], help="topology, node health and replication links of the cluster"
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")

    _add_policy(sub, common)
    catalog.add_parser(sub, common)
    authz.add_parser(sub)
    _add_audit(sub, common)
    _add_compliance(sub)
    _add_consistency(sub)
    # Each repair round walks the digest trees of a pair: a longer default deadline.
    nodes.add_parser(sub, _common_options(deadline_s=120.0))
    _add_subject_rights(sub, common)
    _add_holds(sub, common)
    certs.add_parser(sub)
    backup.add_parser(sub)
    return parser


def _common_options(deadline_s: float) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--coordinator",
        default=os.environ.get("DOMICILE_COORDINATOR", DEFAULT_COORDINATOR),
        metavar="HOST:PORT",
        help="coordinator address (default: $DOMICILE_COORDINATOR or %(default)s)",
    )
    common.add_argument(
        "--deadline",
        type=_positive_float,
        default=deadline_s,
        metavar="SECONDS",
        help="deadline of each request, retries included (default: %(default)s)",
    )
    connect.add_options(common)
    return common


def _add_policy(sub: Any, common: argparse.ArgumentParser) -> None:
    policy = sub.add_parser("policy", help="inspect the residency policy")
    actions = policy.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = actions.add_parser(
        "explain",
        parents=[common],
        help="what the policy decides for a record, an action and a region, and why",
        description="Print the decision (allow, refuse, or allow with fields redacted), the rule, "
        "law, legal basis, reason, the policy-pack facts it relied on (with the date each was "
        "checked and its source), the regions where the action is allowed and the policy version. "
        "The policy is --pack FILE (its regions are the pack's), --cluster-config FILE, or by "
        "default the one in force at the coordinator. Exit 0 allowed (also with redaction), "
        "1 refused, 2 bad input.",
    )
    p.add_argument(
        "--classification",
        "-c",
        required=True,
        help="public, internal, confidential, personal, sensitive_personal or financial",
    )
    p.add_argument(
        "--subject-jurisdiction",
        "-j",
        default="",
        metavar="CC",
        help="ISO 3166-1 alpha-2 or ISO 3166-2 code of the data subject, e.g. DE or US-CA",
    )
    p.add_argument("--region", "-r", required=True, help="the region asked about")
    p.add_argument("--action", "-a", required=True, metavar="{store,replicate,read}")
    p.add_argument(
        "--namespace",
        "-n",
        help="judge by this namespace's scope too, as nodes do; required when the cluster has no policy pack",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pack", metavar="FILE", help="a policy pack file (e.g. deploy/policy/pack.yaml)")
    source.add_argument(
        "--cluster-config", metavar="FILE", help="a cluster config (its policy_pack and scopes)"
    )
    p.add_argument("--json", action="store_true", help="print the explanation as one JSON object")


def _add_audit(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = sub.add_parser("audit", help="check and read a region's audit trail")
    actions = audit.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = actions.add_parser(
        "verify",
        parents=[common],
        help="check a region's audit log against its last head exported to the coordinator",
        description="Stream the region's audit log from its node and check its hash chain against "
        "the last signed head the coordinator accepted. Prints the entries checked, the entries "
        "anchored by the head, its time, and every problem (kind, seq, message). Exit 0 intact "
        "and anchored; 1 a problem, or no head exported yet (not anchored: nothing proves the log); "
        "2 the check could not be made. Each page of the log is one request with --deadline.",
    )
    p.add_argument("--region", "-r", required=True)
    p.add_argument(
        "--problems-max",
        type=_bounded_int(1, 100_000),
        default=100,
        help="list at most this many damaged entries; the rest are counted (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p = actions.add_parser(
        "tail",
        parents=[common],
        help="the last entries of a region's audit log",
        description="Print the last N entries, decoded: seq, time (UTC), principal, action, "
        "namespace/key, decision, rule and detail. Reading the log is itself audited.",
    )
    p.add_argument("--region", "-r", required=True)
    p.add_argument(
        "-n",
        type=_bounded_int(1, AUDIT_TAIL_ENTRIES_MAX),
        default=20,
        help=f"entries to show, 1 to {AUDIT_TAIL_ENTRIES_MAX} (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the entries as one JSON object")


def _add_compliance(sub: Any) -> None:
    compliance = sub.add_parser("compliance", help="check stored records against the policy in force")
    actions = compliance.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    # A scan walks a node's whole store: a longer default deadline than a single record's.
    p = actions.add_parser(
        "scan",
        parents=[_common_options(deadline_s=300.0)],
        help="report the record copies the policy in force does not allow where they are",
        description="Every region's node (or those of --region) checks each record copy it holds "
        "against the policy in force; prints per region the versions checked and every "
        "violation, then a total. Nothing is moved or deleted. Exit 0 none, 1 violations, "
        "2 a region could not be scanned.",
    )
    p.add_argument(
        "--region",
        "-r",
        action="append",
        metavar="REGION",
        help="scan this region (repeatable; default: all)",
    )
    p.add_argument(
        "--violations-max",
        type=_bounded_int(1, VIOLATIONS_MAX_LIMIT),
        default=VIOLATIONS_MAX_DEFAULT,
        help="violations to list per region; all are counted (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p = actions.add_parser(
        "remediate",
        parents=[_common_options(deadline_s=300.0)],
        help="plan or apply the removal of the record copies the policy in force no longer allows",
        description="--plan scans every region (or those of --region) like `compliance scan` and "
        "prints, per region, the copies a remediation would remove and the regions the record "
        "stays in; a copy no region may hold is flagged; a copy a legal hold covers is listed as "
        "kept, with its hold; nothing is changed (exit 0 nothing to remove, 1 removals planned). "
        "--apply (the dpo role) has each region's node remove those copies from its own store "
        "only: nothing replicates the removal, so the allowed copies elsewhere stay; each removal "
        "is audited and each region returns a receipt (exit 0 no violation left, 1 some left: "
        "copies no region may hold are kept without --remove-last-copies, and copies a legal "
        "hold covers are always kept). Exit 2: a region could not be scanned or remediated.",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", action="store_true", help="print the plan; change nothing")
    mode.add_argument("--apply", action="store_true", help="remove the copies (dpo role); print the receipts")
    p.add_argument(
        "--region", "-r", action="append", metavar="REGION", help="plan for this region (repeatable)"
    )
    p.add_argument(
        "--violations-max",
        type=_bounded_int(1, VIOLATIONS_MAX_LIMIT),
        default=VIOLATIONS_MAX_DEFAULT,
        help="copies to list per region; all are counted (default: %(default)s)",
    )
    p.add_argument(
        "--remove-last-copies",
        action="store_true",
        help="with --apply: also remove copies no region may hold (the record leaves the cluster); "
        "a copy a legal hold covers is kept even so",
    )
    p.add_argument(
        "--request-id", default="", help="with --apply: the id the audit entries and receipts carry"
    )
    p.add_argument("--json", action="store_true", help="print the plan or the receipts as one JSON object")


def _add_consistency(sub: Any) -> None:
    consistency = sub.add_parser("consistency", help="how far the replicas of each namespace agree")
    actions = consistency.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = actions.add_parser(
        "check",
        parents=[_common_options(deadline_s=120.0)],
        help="compare every pair of replicas' digest trees, moving no records",
        description="Every pair of nodes that replicate a namespace compares its digest trees: "
        "prints per pair and namespace the keys compared, the divergent keys and the share of "
        "keys on which the two agree, then the overall figures. Nothing is moved. Exit 0 every "
        "key agrees, 1 some key diverges, 2 a pair could not be checked.",
    )
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        metavar="NS",
        help="compare this namespace (repeatable; default: all)",
    )
    p.add_argument(
        "--divergent-max",
        type=_bounded_int(1, 10_000),
        default=100,
        help="divergent keys to list per pair and namespace; all are counted (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _add_subject_rights(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "erase",
        parents=[common],
        help="erase a data subject's records in every region (right to erasure)",
        description="Open an erasure request: every region erases the subject's records, except "
        "those a legal hold or a legal retention obligation keeps, and reports a receipt. Prints the "
        "request (id, status, due time, regions pending); --wait polls until every region has "
        "reported, printing each region's receipt as it arrives. Exit 0 completed (or opened, "
        "without --wait), 1 still open when --wait ran out, 2 an error (an erasure of the subject "
        "already open: its id is printed).",
    )
    p.add_argument("--subject", "-s", required=True, metavar="SUBJECT_ID", help="the data subject")
    p.add_argument("--reason", required=True, help="why (recorded with the request)")
    p.add_argument(
        "--subject-jurisdiction",
        "-j",
        default="",
        metavar="CC",
        help="ISO 3166 code of the subject; decides the due time (US-CA 45 days, else one month)",
    )
    p.add_argument(
        "--wait",
        type=_positive_float,
        metavar="SECONDS",
        help="wait up to this long for every region to report",
    )
    p.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="with --wait: how often to ask the coordinator (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the request as one JSON object")

    # An export streams a subject's records from every region: a longer default deadline.
    p = sub.add_parser(
        "export",
        parents=[_common_options(deadline_s=300.0)],
        help="export a data subject's records from every region (right of access)",
        description="Open an access request, read the subject's records from every region of the "
        "topology, merge the copies of each record into one entry (regions holding it, versions, "
        "classification, retention, legal basis per region, legal hold) and write one JSON "
        "document. The request is completed when every region answered. Exit 0 complete; 2 a "
        "region could not be read (the document names it and the request stays open). --deadline "
        "bounds each region's export stream.",
    )
    p.add_argument("--subject", "-s", required=True, metavar="SUBJECT_ID", help="the data subject")
    p.add_argument(
        "--subject-jurisdiction", "-j", default="", metavar="CC", help="ISO 3166 code of the subject"
    )
    p.add_argument("--reason", default="", help="why (recorded with the request)")
    p.add_argument("--out", "-o", metavar="FILE", help="write the document here (default: stdout)")

    requests = sub.add_parser("requests", help="data-subject requests (erasure, access)")
    actions = requests.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = actions.add_parser(
        "list",
        parents=[common],
        help="requests, newest first",
        description="Print id, kind, subject, status, received and due times, whether the request "
        "is overdue (open past its due time) and the regions that have not completed it.",
    )
    p.add_argument("--open", action="store_true", help="only open requests")
    p.add_argument(
        "--limit",
        type=_bounded_int(1, SUBJECT_REQUESTS_LIMIT_MAX),
        default=100,
        help=f"at most this many, 1 to {SUBJECT_REQUESTS_LIMIT_MAX} (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the requests as one JSON object")
    p = actions.add_parser(
        "show",
        parents=[common],
        help="one request with every region's erasure receipt",
        description="Print the request and, per region that completed it, what it erased per "
        "namespace, the records it kept and why, the data keys destroyed, the audit seq of the "
        "receipt and its times; then what regions erased later, when a legal hold that kept "
        "records of the subject was released (per node and hold: records erased, keys destroyed, "
        "records still kept, when).",
    )
    p.add_argument("request_id", metavar="ID", help="request id, e.g. req-0001f3c2a9")
    p.add_argument("--json", action="store_true", help="print the request as one JSON object")


def _add_holds(sub: Any, common: argparse.ArgumentParser) -> None:
    hold = sub.add_parser("hold", help="legal holds: stop expiry and erasure of what they cover")
    actions = hold.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = actions.add_parser(
        "place",
        parents=[common],
        help="place a legal hold on a subject, a namespace or one record",
        description="Records covered by a hold are neither expired nor erased until it is released; "
        "an erasure keeps them and says why in its receipt.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--subject", "-s", metavar="SUBJECT_ID", help="every record of this subject")
    target.add_argument("--namespace", "-n", metavar="NS", help="every record of this namespace")
    p.add_argument("--key", "-k", help="with --namespace: only this record")
    p.add_argument("--reason", required=True, help="why: a case or matter reference")
    p.add_argument("--json", action="store_true", help="print the hold as JSON")
    p = actions.add_parser("release", parents=[common], help="release a legal hold")
    p.add_argument("hold_id", metavar="HOLD_ID", help="hold id, e.g. hold-0001f3c2a9")
    p.add_argument("--reason", required=True, help="why it is released")
    p.add_argument("--json", action="store_true", help="print the released hold as JSON")
    p = actions.add_parser("list", parents=[common], help="legal holds in force")
    p.add_argument("--json", action="store_true", help="print the holds as one JSON object")


def exec_daemon(daemon: str, args: Sequence[str]) -> None:
    """Replaces this process with the daemon so that signals reach it directly."""
    argv = [sys.executable, "-m", daemon, *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    # Imported on use: `domicile get` should not pay for what `up` needs, and the reverse.
    if command == "policy explain":
        from domicile.cli.policy import explain

        return explain
    if command == "authz explain":
        return authz.explain
    if command in ("audit verify", "audit tail"):
        from domicile.cli import audit

        return audit.verify if command == "audit verify" else audit.tail
    if command in ("catalog list", "catalog show", "catalog ropa", "catalog check-schemas"):
        return catalog.catalog
    if command == "compliance scan":
        from domicile.cli.compliance import scan

        return scan
    if command == "compliance remediate":
        from domicile.cli.remediate import remediate

        return remediate
    if command == "nodes remove":
        from domicile.cli.nodes import remove

        return remove
    if command == "consistency check":
        from domicile.cli.consistency import check

        return check
    if command == "erase":
        from domicile.cli.erase import erase

        return erase
    if command == "export":
        from domicile.cli.export import export

        return export
    if command in ("requests list", "requests show"):
        from domicile.cli import subject_requests

        return subject_requests.list_requests if command == "requests list" else subject_requests.show
    if command in ("hold place", "hold release", "hold list"):
        from domicile.cli import holds

        return {"hold place": holds.place, "hold release": holds.release, "hold list": holds.list_holds}[
            command
        ]
    if command in ("certs init", "certs issue", "certs revoke"):
        return {"certs init": certs.init, "certs issue": certs.issue, "certs revoke": certs.revoke}[command]
    if command in ("backup status", "backup list", "backup verify"):
        return {
            "backup status": backup.status,
            "backup list": backup.list_generations,
            "backup verify": backup.verify,
        }[command]
    if command == "up":
        from domicile.cli.up import up

        return up
    if command == "status":
        from domicile.cli.status import status

        return status
    if command == "load":
        from domicile.cli.load import load

        return load
    from domicile.cli import records

    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "put": records.put,
        "get": records.get,
        "delete": records.delete,
        "scan": records.scan,
    }
    return handlers[command]


def report_error(error: DomicileError) -> None:
    print(f"error: {error.message}", file=sys.stderr)
    if isinstance(error, PlacementRefused):
        print(f"allowed regions: {', '.join(error.allowed_regions) or 'none'}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    # Daemon flags belong to the daemon; argparse must not see (or reject) them.
    if args_in and args_in[0] in DAEMONS:
        exec_daemon(args_in[0], args_in[1:])
    if args_in and args_in[0] in NODE_TOOLS:
        exec_daemon(NODE_TOOLS[args_in[0]], args_in[1:])
    args = build_parser().parse_args(args_in)
    command = " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))
    try:
        return _handler(command)(args)
    except DomicileError as exc:
        report_error(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `domicile scan ... | head`); that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
