"""requests list and requests show: data-subject requests (erasure, access) as the coordinator
keeps them, with every region's erasure receipt, and the receipts of what regions erased later,
at the release of a legal hold that had kept records of the subject. The renderings here are
shared with `erase`.

A request is overdue when it is still open past its due time by this machine's clock.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from domicile.cli import connect
from domicile.cli.output import iso_ms, plural, print_json, table
from domicile.client import Client
from domicile.subjects import RegionReceipt, RequestKind, RequestStatus, SubjectRequest

EXIT_OK = 0
# Values of `requests show` start in this column: after the longest label, "records exported:".
_LABEL_WIDTH = 19


def now_ms() -> int:
    return int(time.time() * 1000)


def _time_or_none(unix_ms: int) -> str | None:
    return iso_ms(unix_ms) if unix_ms else None


def receipt_json(r: RegionReceipt) -> dict[str, Any]:
    return {
        "region": r.region,
        "node_id": r.node_id,
        "started_unix_ms": r.started_ms,
        "started": _time_or_none(r.started_ms),
        "completed_unix_ms": r.completed_ms,
        "completed": _time_or_none(r.completed_ms),
        "erased": dict(r.erased),
        "erased_total": r.erased_total,
        "kept": [{"namespace": k.namespace, "key": k.key, "reason": k.reason} for k in r.kept],
        "kept_total": r.kept_total,
        "keys_destroyed": r.keys_destroyed,
        "audit_seq": r.audit_seq,
        "released_hold_id": r.released_hold_id,
    }


def request_json(r: SubjectRequest, at_ms: int) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "kind": r.kind.label,
        "subject_id": r.subject_id,
        "subject_jurisdiction": r.subject_jurisdiction,
        "reason": r.reason,
        "status": r.status.label,
        "received_unix_ms": r.received_ms,
        "received": _time_or_none(r.received_ms),
        "due_unix_ms": r.due_ms,
        "due": _time_or_none(r.due_ms),
        "overdue": r.overdue(at_ms),
        "completed_unix_ms": r.completed_ms,
        "completed": _time_or_none(r.completed_ms),
        "regions_pending": list(r.regions_pending),
        "receipts": [receipt_json(receipt) for receipt in r.receipts],
        "release_receipts": [receipt_json(receipt) for receipt in r.release_receipts],
        "records_exported": r.records_exported,
    }


def erased_text(r: RegionReceipt) -> str:
    per_namespace = ", ".join(f"{ns} {n}" for ns, n in r.erased)
    total = plural(r.erased_total, "record")
    return f"{total} ({per_namespace})" if per_namespace else total


def receipt_summary(r: RegionReceipt) -> str:
    """One line: what a region did."""
    return (
        f"{r.region} reported: erased {erased_text(r)}, kept {len(r.kept)}, "
        f"{plural(r.keys_destroyed, 'key')} destroyed (node {r.node_id or '-'}, audit seq {r.audit_seq})"
    )


def receipt_lines(r: RegionReceipt) -> list[str]:
    lines = [
        f"  {r.region}  node {r.node_id or '-'}  started {_time_or_none(r.started_ms) or '-'}  "
        f"completed {_time_or_none(r.completed_ms) or '-'}  audit seq {r.audit_seq}",
        f"    erased:         {erased_text(r)}",
        f"    keys destroyed: {r.keys_destroyed}",
        f"    kept:           {plural(len(r.kept), 'record')}",
    ]
    lines.extend(f"      {k.namespace}/{k.key}: {k.reason}" for k in r.kept)
    return lines


def release_receipt_lines(r: RegionReceipt) -> list[str]:
    """What a region erased at a hold's release; `kept` there counts what other holds or legal
    obligations still keep."""
    return [
        f"  {r.region}  node {r.node_id or '-'}  at the release of {r.released_hold_id}  "
        f"completed {_time_or_none(r.completed_ms) or '-'}  audit seq {r.audit_seq}",
        f"    erased:         {erased_text(r)}",
        f"    keys destroyed: {r.keys_destroyed}",
        f"    still kept:     {plural(r.kept_total, 'record')}",
    ]


def status_text(r: SubjectRequest, at_ms: int) -> str:
    if r.overdue(at_ms):
        return f"{r.status.label}, OVERDUE (was due {iso_ms(r.due_ms)})"
    return r.status.label


def request_text(r: SubjectRequest, at_ms: int) -> str:
    rows: list[tuple[str, str]] = [
        ("request", r.request_id),
        ("kind", r.kind.label),
        ("subject", r.subject_id),
        ("jurisdiction", r.subject_jurisdiction or "-"),
        ("reason", r.reason or "-"),
        ("status", status_text(r, at_ms)),
        ("received", _time_or_none(r.received_ms) or "-"),
        ("due", _time_or_none(r.due_ms) or "-"),
    ]
    if r.completed_ms:
        rows.append(("completed", iso_ms(r.completed_ms)))
    rows.append(("regions pending", ", ".join(r.regions_pending) or "none"))
    if r.kind is RequestKind.ACCESS:
        rows.append(("records exported", str(r.records_exported)))
    lines = [f"{label + ':':<{_LABEL_WIDTH}}{value}" for label, value in rows]
    if r.kind is RequestKind.ERASURE or r.receipts:
        if r.receipts:
            lines.append(f"receipts ({plural(len(r.receipts), 'region')}):")
            for receipt in r.receipts:
                lines.extend(receipt_lines(receipt))
        else:
            lines.append(f"{'receipts:':<{_LABEL_WIDTH}}none yet")
    if r.release_receipts:
        lines.append(f"erased at hold releases ({plural(len(r.release_receipts), 'receipt')}):")
        for receipt in r.release_receipts:
            lines.extend(release_receipt_lines(receipt))
    return "\n".join(lines)


def requests_table(requests: Sequence[SubjectRequest], at_ms: int) -> str:
    rows = [
        [
            r.request_id,
            r.kind.label,
            r.subject_id,
            r.status.label,
            _time_or_none(r.received_ms) or "-",
            _time_or_none(r.due_ms) or "-",
            "yes" if r.overdue(at_ms) else "-",
            ",".join(r.regions_pending) or "-",
        ]
        for r in requests
    ]
    return table(["id", "kind", "subject", "status", "received", "due", "overdue", "pending"], rows)


def list_requests(args: argparse.Namespace) -> int:
    with Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        requests = client.subject_requests(open_only=args.open, limit=args.limit)
    at = now_ms()
    if args.json:
        print_json({"requests": [request_json(r, at) for r in requests]})
    elif not requests:
        print("no open subject requests" if args.open else "no subject requests")
    else:
        print(requests_table(requests, at))
        overdue = sum(1 for r in requests if r.overdue(at))
        if overdue:
            print(f"{plural(overdue, 'request')} overdue")
    return EXIT_OK


def show(args: argparse.Namespace) -> int:
    with Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        request = client.subject_request(args.request_id)
    at = now_ms()
    if args.json:
        print_json(request_json(request, at))
    else:
        print(request_text(request, at))
    return EXIT_OK


def is_completed(r: SubjectRequest) -> bool:
    return r.status is RequestStatus.COMPLETED
