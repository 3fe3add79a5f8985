"""load: bulk-write the records of a JSON Lines file through PutBatch.

Each line is one JSON object: "key" and "value" (UTF-8 text) or "value_base64" (bytes), and
optionally "subject_id", "subject_jurisdiction", "classification", "content_type" and
"request_id". A line that is not such an object is reported with its number and skipped; a
record the node refuses is reported with its line number and the reason; every other record is
written. The summary goes to stdout, the reports and the progress bar to stderr.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from domicile.cli import connect
from domicile.client import BatchRecord, Client
from domicile.errors import DomicileError, InvalidArgument
from domicile.wire.limits import PUT_BATCH_RECORDS_MAX

EXIT_OK = 0
EXIT_SOME_NOT_LOADED = 1
TEXT_FIELDS = ("subject_id", "subject_jurisdiction", "classification", "content_type", "request_id")
KNOWN_FIELDS = frozenset({"key", "value", "value_base64", *TEXT_FIELDS})
# Bad lines and refusals reported one by one; past this many, only counted.
REPORTED_MAX = 100
PROGRESS_WIDTH = 30
PROGRESS_INTERVAL_S = 0.2


@dataclass
class Summary:
    written: int = 0
    refused: int = 0
    bad_lines: int = 0
    reported: int = 0
    started: float = field(default_factory=time.monotonic)

    def report(self, line_no: int, message: str) -> None:
        if self.reported < REPORTED_MAX:
            print(f"line {line_no}: {message}", file=sys.stderr)
        elif self.reported == REPORTED_MAX:
            print(f"(more than {REPORTED_MAX} lines not loaded; only counting from here)", file=sys.stderr)
        self.reported += 1


def parse_line(text: str) -> BatchRecord:
    """One line's record; InvalidArgument says what is wrong with the line."""
    try:
        obj = json.loads(text)
    except ValueError as error:
        raise InvalidArgument(f"not JSON ({error})") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"a JSON {type(obj).__name__}, not an object with key and value")
    unknown = sorted(set(obj) - KNOWN_FIELDS)
    if unknown:
        raise InvalidArgument(f"unknown fields {unknown}; allowed: {sorted(KNOWN_FIELDS)}")
    key = obj.get("key")
    if not isinstance(key, str) or not key:
        raise InvalidArgument('"key" must be a non-empty string')
    if ("value" in obj) == ("value_base64" in obj):
        raise InvalidArgument('give exactly one of "value" (text) and "value_base64" (bytes)')
    if "value" in obj:
        if not isinstance(obj["value"], str):
            raise InvalidArgument('"value" must be a string (use "value_base64" for bytes)')
        value = obj["value"].encode("utf-8", "surrogatepass")
    else:
        try:
            value = base64.b64decode(str(obj["value_base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument('"value_base64" is not base64') from None
    texts = {}
    for name in TEXT_FIELDS:
        item = obj.get(name, "")
        if not isinstance(item, str):
            raise InvalidArgument(f'"{name}" must be a string')
        texts[name] = item
    return BatchRecord(
        key=key,
        value=value,
        subject_id=texts["subject_id"],
        subject_jurisdiction=texts["subject_jurisdiction"],
        classification=texts["classification"] or None,
        content_type=texts["content_type"],
        # Fixed per record, so a retried batch writes each record once.
        request_id=texts["request_id"] or uuid.uuid4().hex,
    )


def batches(
    stream: IO[str], size: int, summary: Summary
) -> Iterator[tuple[list[int], list[BatchRecord], int]]:
    """(line numbers, records, characters read so far) of each batch; bad lines reported."""
    numbers: list[int] = []
    records: list[BatchRecord] = []
    read = 0
    for line_no, text in enumerate(stream, start=1):
        read += len(text)
        if not text.strip():
            continue
        try:
            records.append(parse_line(text))
        except InvalidArgument as error:
            summary.bad_lines += 1
            summary.report(line_no, f"bad line: {error.message}")
            continue
        numbers.append(line_no)
        if len(records) == size:
            yield numbers, records, read
            numbers, records = [], []
    if records:
        yield numbers, records, read


class Progress:
    """A bar on stderr when it is a terminal (nothing otherwise), by share of the file read."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.enabled = sys.stderr.isatty()
        self.last = 0.0

    def show(self, done: int, summary: Summary, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < PROGRESS_INTERVAL_S):
            return
        self.last = now
        share = min(done / self.total, 1.0)
        filled = int(share * PROGRESS_WIDTH)
        rate = summary.written / max(now - summary.started, 1e-9)
        bar = "#" * filled + "-" * (PROGRESS_WIDTH - filled)
        print(
            f"\r[{bar}] {share * 100:5.1f}%  {summary.written} written  {rate:,.0f}/s",
            end="\n" if final else "",
            file=sys.stderr,
            flush=True,
        )


def load(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not 1 <= args.batch <= PUT_BATCH_RECORDS_MAX:
        raise InvalidArgument(f"--batch is {args.batch}; it must be 1 to {PUT_BATCH_RECORDS_MAX}")
    try:
        stream = path.open(encoding="utf-8", errors="surrogateescape", newline="\n")
        total = path.stat().st_size
    except OSError as error:
        raise InvalidArgument(f"cannot read {path}: {error.strerror}") from None
    summary = Summary()
    progress = Progress(total)
    with stream, Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        for numbers, records, read in batches(stream, args.batch, summary):
            results = client.put_batch(args.namespace, records, region=args.region)
            for line_no, result in zip(numbers, results, strict=True):
                if isinstance(result, DomicileError):
                    summary.refused += 1
                    summary.report(line_no, f"refused: {result.message}")
                else:
                    summary.written += 1
            progress.show(read, summary)
    progress.show(total, summary, final=True)
    seconds = time.monotonic() - summary.started
    print(
        f"loaded {summary.written} records into {args.namespace} in {seconds:.1f} s "
        f"({summary.written / max(seconds, 1e-9):,.0f}/s); {summary.refused} refused, "
        f"{summary.bad_lines} bad lines"
    )
    return EXIT_OK if not summary.refused and not summary.bad_lines else EXIT_SOME_NOT_LOADED
