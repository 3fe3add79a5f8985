"""load: bulk-write the records of a JSON Lines file through PutBatch.

Each line is one JSON object: "key" and "value" (UTF-8 text) or "value_base64" (bytes), and
optionally "subject_id", "subject_jurisdiction", "classification", "content_type" and
"request_id". A line that is not such an object, or whose fields a request could not carry (an
unknown classification, a bad request id, a value that is not UTF-8 text), is reported with its
number and skipped; a record the node refuses is reported with its line number and the reason;
every other record is written. Batches hold at most --batch records and stay under the storage
service's request bound. The summary goes to stdout, the reports and the progress bar to stderr.
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
from domicile.model import check_namespace_name
from domicile.wire.limits import PUT_BATCH_RECORDS_MAX, STORAGE_REQUEST_BYTES_MAX
from domicile.wire.requests import put_request

EXIT_OK = 0
EXIT_SOME_NOT_LOADED = 1
TEXT_FIELDS = ("subject_id", "subject_jurisdiction", "classification", "content_type", "request_id")
KNOWN_FIELDS = frozenset({"key", "value", "value_base64", *TEXT_FIELDS})
# Bad lines and refusals reported one by one; past this many, only counted.
REPORTED_MAX = 100
PROGRESS_WIDTH = 30
PROGRESS_INTERVAL_S = 0.2
# A batch's request stays under the storage bound, with room for the request's own framing.
BATCH_BYTES_MAX = STORAGE_REQUEST_BYTES_MAX - 64 * 1024
# The tag and length prefix of one Put inside the PutBatch request.
PUT_FRAMING_BYTES = 8


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
        try:
            value = obj["value"].encode("utf-8")
        except UnicodeEncodeError:
            # A byte of the file that is not UTF-8 (read as a lone surrogate), or a lone
            # surrogate escaped in the JSON: neither is text, and no encoding of it is the
            # file's bytes.
            raise InvalidArgument('"value" is not UTF-8 text; give bytes as "value_base64"') from None
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
    stream: IO[str], namespace: str, size: int, summary: Summary, bytes_max: int = BATCH_BYTES_MAX
) -> Iterator[tuple[list[int], list[BatchRecord], int]]:
    """(line numbers, records, characters read so far) of each batch of at most `size` records
    and `bytes_max` bytes on the wire; bad lines reported. A line is checked as its request
    will be (key, classification, request id, texts), so that one bad field is a bad line, not
    a failed batch."""
    numbers: list[int] = []
    records: list[BatchRecord] = []
    weight = 0
    read = 0
    for line_no, text in enumerate(stream, start=1):
        read += len(text)
        if not text.strip():
            continue
        try:
            record = parse_line(text)
            record_bytes = _request_bytes(namespace, record)
        except InvalidArgument as error:
            summary.bad_lines += 1
            summary.report(line_no, f"bad line: {error.message}")
            continue
        if records and weight + record_bytes > bytes_max:
            yield numbers, records, read
            numbers, records, weight = [], [], 0
        records.append(record)
        numbers.append(line_no)
        weight += record_bytes
        if len(records) == size:
            yield numbers, records, read
            numbers, records, weight = [], [], 0
    if records:
        yield numbers, records, read


def _request_bytes(namespace: str, record: BatchRecord) -> int:
    """What the record weighs in a PutBatch request (its Put and the field's framing), checked
    as the SDK checks it (InvalidArgument)."""
    put = put_request(
        namespace,
        record.key,
        record.value,
        None,
        record.subject_id,
        record.subject_jurisdiction,
        record.classification,
        record.content_type,
        record.context_token,
        record.request_id,
    )
    return put.ByteSize() + PUT_FRAMING_BYTES


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
    check_namespace_name(args.namespace)
    try:
        stream = path.open(encoding="utf-8", errors="surrogateescape", newline="\n")
        total = path.stat().st_size
    except OSError as error:
        raise InvalidArgument(f"cannot read {path}: {error.strerror}") from None
    summary = Summary()
    progress = Progress(total)
    with stream, Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        for numbers, records, read in batches(stream, args.namespace, args.batch, summary):
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
