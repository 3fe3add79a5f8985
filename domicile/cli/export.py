"""export: give a data subject their data (GDPR Art. 15 and 20, CCPA right to know).

Opens an access request at the coordinator, streams the subject's records from every region of
the topology (concurrently, each region's node serving what it holds and may serve), merges the
copies of one record held in several regions into one entry, and writes one JSON document. The
access request is completed, with the number of records, only when every region answered: a
region that could not be read is named in the document, the request stays open and the exit
code is 2. Exit 0 when the export is complete.

Values are exported as UTF-8 text when they decode, else as base64 ("value_encoding" says
which); a value the residency policy withheld from a region's export is listed with encoding
"redacted" rather than left out.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from domicile.cli import connect
from domicile.cli.output import iso_ms, plural
from domicile.cli.subject_requests import now_ms
from domicile.client import Client, ExportedCopy, ReadVersion
from domicile.errors import DomicileError, InvalidArgument
from domicile.hlc import physical_ms
from domicile.model import Classification
from domicile.topology import Topology

EXIT_COMPLETE = 0
EXIT_INCOMPLETE = 2
# Regions are read concurrently, at most this many at a time.
REGIONS_INFLIGHT_MAX = 8
# The whole document is built in memory: a region holding more copies than this for one
# subject is reported as not read rather than exhausting memory.
REGION_COPIES_MAX = 1_000_000
# A long export says how far each region got every this many records (on stderr).
PROGRESS_EVERY_RECORDS = 10_000


@dataclass
class RegionExport:
    region: str
    copies: list[ExportedCopy] = field(default_factory=list)
    error: str = ""

    @property
    def answered(self) -> bool:
        return not self.error


class Progress:
    """Progress lines on stderr, from several reading threads."""

    def __init__(self, out: TextIO, every: int = PROGRESS_EVERY_RECORDS) -> None:
        self._out = out
        self._every = every
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        with self._lock:
            print(line, file=self._out, flush=True)

    def tick(self, region: str, count: int) -> None:
        if count % self._every == 0:
            self.say(f"export: {region}: {plural(count, 'record')} read")

    def done(self, export: RegionExport) -> None:
        if not export.answered:
            self.say(f"warning: {export.region} could not be read: {export.error}")
        elif len(export.copies) >= self._every:
            self.say(f"export: {export.region}: done, {plural(len(export.copies), 'record')}")


def read_region(
    client: Client,
    region: str,
    subject_id: str,
    request_id: str,
    deadline_s: float,
    progress: Progress,
    copies_max: int = REGION_COPIES_MAX,
) -> RegionExport:
    """One region's copies, or why they could not all be read (then none are kept: a partial
    region must not pass for a complete one)."""
    export = RegionExport(region)
    try:
        for copy in client.export_subject_region(region, subject_id, request_id, deadline_s=deadline_s):
            if len(export.copies) >= copies_max:
                export.error = f"holds more than {copies_max} records of the subject; the export stops there"
                break
            export.copies.append(copy)
            progress.tick(region, len(export.copies))
    except DomicileError as exc:
        read = len(export.copies)
        export.error = (
            f"the export broke after {plural(read, 'record')}: {exc.message}" if read else exc.message
        )
    if export.error:
        export.copies = []
    progress.done(export)
    return export


def read_regions(
    client: Client,
    regions: Sequence[str],
    subject_id: str,
    request_id: str,
    deadline_s: float,
    progress: Progress,
) -> list[RegionExport]:
    if not regions:
        return []
    with ThreadPoolExecutor(max_workers=min(REGIONS_INFLIGHT_MAX, len(regions))) as pool:
        futures = [
            pool.submit(read_region, client, r, subject_id, request_id, deadline_s, progress) for r in regions
        ]
        return [f.result() for f in futures]


# -- merging copies


def value_fields(value: bytes, redacted: bool) -> dict[str, Any]:
    if redacted:
        return {"value": None, "value_encoding": "redacted"}
    try:
        return {"value": value.decode("utf-8"), "value_encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode("ascii"), "value_encoding": "base64"}


@dataclass
class _MergedVersion:
    version: ReadVersion
    regions: list[str] = field(default_factory=list)
    redacted_in: list[str] = field(default_factory=list)
    redacted_fields: set[str] = field(default_factory=set)

    @property
    def value_redacted(self) -> bool:
        return "value" in self.version.redacted_fields


def _merge_versions(copies: Sequence[ExportedCopy]) -> list[_MergedVersion]:
    """The distinct versions of one record's copies. Copies of a version (same dot) in several
    regions are one entry listing those regions; a copy whose value was withheld counts for the
    version but does not hide the value another region gave. Two regions giving different
    values for one dot (which replication never produces) are both kept."""
    by_dot: dict[tuple[str, int], list[_MergedVersion]] = {}
    for copy in copies:
        for v in copy.versions:
            entries = by_dot.setdefault((v.dot.node_id, v.dot.counter), [])
            redacted = "value" in v.redacted_fields
            match = next(
                (
                    e
                    for e in entries
                    if redacted
                    or e.value_redacted
                    or (e.version.value, e.version.tombstone) == (v.value, v.tombstone)
                ),
                None,
            )
            if match is None:
                match = _MergedVersion(v)
                entries.append(match)
            elif not redacted and (
                match.value_redacted or len(v.redacted_fields) < len(match.version.redacted_fields)
            ):
                # The fullest copy speaks for the version.
                match.version = v
            if copy.region not in match.regions:
                match.regions.append(copy.region)
            if v.redacted_fields:
                match.redacted_fields.update(v.redacted_fields)
                if copy.region not in match.redacted_in:
                    match.redacted_in.append(copy.region)
    merged = [e for entries in by_dot.values() for e in entries]
    merged.sort(key=lambda e: (e.version.hlc, e.version.dot.node_id, e.version.dot.counter))
    return merged


def version_json(m: _MergedVersion) -> dict[str, Any]:
    v = m.version
    out: dict[str, Any] = {
        "dot": f"{v.dot.node_id}:{v.dot.counter}",
        "hlc": v.hlc,
        "written": iso_ms(physical_ms(v.hlc)) if v.hlc else None,
    }
    out.update(value_fields(v.value, m.value_redacted))
    out.update(
        {
            "content_type": v.content_type,
            "tombstone": v.tombstone,
            "subject_jurisdiction": v.subject_jurisdiction,
            "classification": v.classification.label,
            "origin_region": v.origin_region,
            "regions": m.regions,
            # Fields the residency policy withheld from the copies of these regions.
            "redacted_fields": sorted(m.redacted_fields),
            "redacted_in": m.redacted_in,
        }
    )
    return out


def _strictest(classes: Iterable[Classification]) -> Classification:
    return max(classes, key=lambda c: c.strictness, default=Classification.UNSPECIFIED)


def record_json(namespace: str, key: str, copies: Sequence[ExportedCopy]) -> dict[str, Any]:
    """One record: what every region that holds a copy said about it."""
    retention = next((c for c in copies if c.retention_class), copies[0])
    holds = list(dict.fromkeys(c.hold_reason for c in copies if c.hold_reason))
    return {
        "namespace": namespace,
        "key": key,
        # Copies should agree; if they do not, the strictest is the safe statement.
        "classification": _strictest(c.classification for c in copies).label,
        "regions": list(dict.fromkeys(c.region for c in copies)),
        "versions": [version_json(m) for m in _merge_versions(copies)],
        "retention_class": retention.retention_class,
        "retention_period_seconds": retention.retention_period_s,
        "legal_basis": {c.region: c.legal_basis for c in copies},
        "hold": "; ".join(holds) if holds else None,
        "hold_regions": [c.region for c in copies if c.hold_reason],
    }


def merge_copies(copies: Iterable[ExportedCopy], region_order: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One entry per (namespace, key), in that order; within an entry, regions in
    region_order (the topology's), then by name."""
    rank: Mapping[str, int] = {r: i for i, r in enumerate(region_order)}
    groups: dict[tuple[str, str], list[ExportedCopy]] = {}
    for copy in copies:
        groups.setdefault((copy.namespace, copy.key), []).append(copy)
    records = []
    for (namespace, key), group in sorted(groups.items()):
        group.sort(key=lambda c: (rank.get(c.region, len(rank)), c.region))
        records.append(record_json(namespace, key, group))
    return records


def regions_to_read(topology: Topology) -> tuple[list[str], list[str]]:
    """The regions that may hold records (those with a registered node, up or down: configured
    ones in config order, then any the config no longer has), and the configured regions with no
    node, which hold nothing (as the coordinator holds when it orders erasures)."""
    with_nodes = {n.region for n in topology.nodes}
    configured = topology.region_names()
    read = [r for r in configured if r in with_nodes] + sorted(with_nodes - set(configured))
    return read, [r for r in configured if r not in with_nodes]


def export_document(
    request_id: str,
    subject_id: str,
    subject_jurisdiction: str,
    exports: Sequence[RegionExport],
    generated_ms: int,
    regions_without_nodes: Sequence[str] = (),
) -> dict[str, Any]:
    region_order = [e.region for e in exports]
    records = merge_copies((c for e in exports for c in e.copies), region_order)
    unreachable = [{"region": e.region, "error": e.error} for e in exports if not e.answered]
    return {
        "request_id": request_id,
        "subject_id": subject_id,
        "subject_jurisdiction": subject_jurisdiction,
        "generated_at": iso_ms(generated_ms),
        "generated_unix_ms": generated_ms,
        "complete": not unreachable,
        "regions_answered": [e.region for e in exports if e.answered],
        "regions_unreachable": unreachable,
        # Configured, but no node has ever registered there (or every one was removed): they
        # hold nothing.
        "regions_without_nodes": list(regions_without_nodes),
        "records_total": len(records),
        "records": records,
    }


def write_document(doc: dict[str, Any], out: str | None) -> None:
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(out)
    # The document is the subject's personal data: readable by its owner only, and never
    # seen half-written under its final name.
    tmp = path.with_name(f".{path.name}.partial")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidArgument(f"cannot write --out {path}: {exc.strerror}") from None


def export(args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr)
    with Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        # The topology first: a request is opened only when there is something to read it from.
        regions, without_nodes = regions_to_read(client.topology())
        request = client.open_access_request(args.subject, args.reason, args.subject_jurisdiction or None)
        exports = read_regions(client, regions, args.subject, request.request_id, args.deadline, progress)
        doc = export_document(
            request.request_id, args.subject, args.subject_jurisdiction, exports, now_ms(), without_nodes
        )
        write_document(doc, args.out)
        where = f" to {args.out}" if args.out else ""
        if not doc["complete"]:
            failed = ", ".join(u["region"] for u in doc["regions_unreachable"])
            print(
                f"error: export incomplete: could not read {failed}; access request "
                f"{request.request_id} stays open (the document{where} says what was read)",
                file=sys.stderr,
            )
            return EXIT_INCOMPLETE
        try:
            client.complete_access_request(request.request_id, doc["records_total"])
        except DomicileError as exc:
            print(
                f"error: the export was written{where}, but access request {request.request_id} "
                f"could not be completed: {exc.message}",
                file=sys.stderr,
            )
            return EXIT_INCOMPLETE
    if args.out:
        print(
            f"exported {plural(doc['records_total'], 'record')} of {args.subject} from "
            f"{plural(len(regions), 'region')} to {args.out}; access request {request.request_id} completed"
        )
    return EXIT_COMPLETE
