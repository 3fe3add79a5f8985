"""erase: open an erasure request for a data subject (GDPR Art. 17, CCPA right to delete) and,
with --wait, follow it until every region has reported.

Every region erases the subject's records except those a legal hold or a legal retention
obligation keeps, and reports a receipt to the coordinator; the request completes when the last
region reports. Exit codes: 0 completed (or opened, without --wait); 1 still open when --wait
ran out; 2 an error, including an erasure of the subject that is already open (its id is
printed).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from typing import TextIO

from domicile.cli import connect
from domicile.cli.output import iso_ms, plural, print_json
from domicile.cli.subject_requests import (
    is_completed,
    now_ms,
    receipt_summary,
    request_json,
    request_text,
)
from domicile.client import Client
from domicile.errors import AlreadyExists, DomicileError
from domicile.subjects import RegionReceipt, SubjectRequest

EXIT_COMPLETED = 0
EXIT_STILL_OPEN = 1
EXIT_ERROR = 2

# Request ids look like req-0001f3c2a9; the coordinator names the open one in ALREADY_EXISTS.
_REQUEST_ID_RE = re.compile(r"\breq-[0-9A-Za-z]+(?:[-_][0-9A-Za-z]+)*")


def request_id_in(message: str) -> str | None:
    """The first request id a message names, or None."""
    found = _REQUEST_ID_RE.search(message)
    return found.group(0) if found else None


def wait_for_completion(
    client: Client,
    request: SubjectRequest,
    wait_s: float,
    interval_s: float,
    on_receipt: Callable[[RegionReceipt], None],
    *,
    on_poll_error: Callable[[DomicileError], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SubjectRequest:
    """Polls the request every interval_s until it completes or wait_s has passed (one last
    poll at the end of the wait); calls on_receipt once for each region that reports meanwhile.
    A transient failure of a poll (the coordinator restarting) is passed to on_poll_error and
    polling goes on; any other failure is raised."""
    end = clock() + wait_s
    seen = {r.region for r in request.receipts}
    while not is_completed(request):
        left = end - clock()
        if left <= 0:
            break
        sleep(min(interval_s, left))
        try:
            request = client.subject_request(request.request_id)
        except DomicileError as exc:
            if not exc.retriable:
                raise
            if on_poll_error is not None:
                on_poll_error(exc)
            continue
        for receipt in request.receipts:
            if receipt.region not in seen:
                seen.add(receipt.region)
                on_receipt(receipt)
    return request


def outcome_text(request: SubjectRequest, wait_s: float) -> str:
    erased = sum(r.erased_total for r in request.receipts)
    kept = sum(len(r.kept) for r in request.receipts)
    reported = plural(len(request.receipts), "region")
    if is_completed(request):
        when = f" at {iso_ms(request.completed_ms)}" if request.completed_ms else ""
        return (
            f"completed{when}: {reported} reported, {plural(erased, 'record')} erased, "
            f"{plural(kept, 'record')} kept"
        )
    pending = ", ".join(request.regions_pending) or "-"
    return f"still open after {wait_s:g}s: {reported} reported; waiting for {pending}"


def _report_already_open(error: AlreadyExists, subject_id: str) -> None:
    print(f"error: {error.message}", file=sys.stderr)
    open_id = request_id_in(error.message)
    if open_id is not None:
        print(
            f"open erasure request of {subject_id}: {open_id} (domicile requests show {open_id})",
            file=sys.stderr,
        )


def erase(args: argparse.Namespace) -> int:
    # Progress goes where it does not mix with the one JSON document.
    progress: TextIO = sys.stderr if args.json else sys.stdout
    with Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        try:
            request = client.erase_subject(args.subject, args.reason, args.subject_jurisdiction or None)
        except AlreadyExists as exc:
            _report_already_open(exc, args.subject)
            return EXIT_ERROR
        if not args.json:
            print(request_text(request, now_ms()), flush=True)
        if args.wait is not None and not is_completed(request):
            regions = plural(len(request.regions_pending), "region")
            print(
                f"waiting up to {args.wait:g}s for {regions} to report",
                file=progress,
                flush=True,
            )
            request = wait_for_completion(
                client,
                request,
                args.wait,
                min(args.poll_interval, args.wait),
                lambda r: print(receipt_summary(r), file=progress, flush=True),
                on_poll_error=lambda e: print(
                    f"warning: poll failed: {e.message}", file=sys.stderr, flush=True
                ),
            )
            print(outcome_text(request, args.wait), file=progress, flush=True)
    if args.json:
        print_json(request_json(request, now_ms()))
    if args.wait is None or is_completed(request):
        return EXIT_COMPLETED
    return EXIT_STILL_OPEN
