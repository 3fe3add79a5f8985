"""audit verify and audit tail: check a region's audit trail, show its last entries.

`audit verify` takes the region's last head exported to the coordinator first, then streams the
log from the region's node and checks the chain against that head. Taking the head first
matters: the log can only have grown since, so a head larger than the log read means entries
were cut off, never that the read raced an export.

Exit codes of verify: 0 the log is intact and anchored by a valid exported head; 1 a problem
was found, or no head was exported yet ("not anchored": the chain may be internally consistent,
but nothing outside the node vouches for it, so nothing proves it complete or unaltered);
2 the check could not be made (unknown region, a node or the coordinator unreachable).

A node restored from a backup, or found put back from an older copy at start, is a new
incarnation and starts a new chain; the coordinator keeps the last head of each chain closed so.
verify checks the current chain and lists the closed ones: their entries after the copy the
node was put back from are not in its log any more, and the closed heads say how many there
were. A closed chain does not change the exit code (a restore is an operator's act, recorded
and alerted on at the coordinator); it is there for the auditor to see.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from domicile.audit import AuditEntry, ClosedChain, SignedHead, StoredEntry, VerifyReport, verify_log
from domicile.cli import connect
from domicile.cli.output import iso_ms, plural, print_json, table
from domicile.client import Client
from domicile.errors import DataCorruption

EXIT_OK = 0
EXIT_PROBLEMS = 1
# A long verification says how far it got every this many entries (on stderr).
PROGRESS_EVERY_ENTRIES = 100_000


def with_progress(
    entries: Iterable[StoredEntry], region: str, out: TextIO, every: int | None = None
) -> Iterator[StoredEntry]:
    step = every or PROGRESS_EVERY_ENTRIES
    for count, entry in enumerate(entries, 1):
        yield entry
        if count % step == 0:
            print(f"audit log of {region}: {count} entries read", file=out, flush=True)


@dataclass(frozen=True)
class Verification:
    region: str
    head: SignedHead | None
    accepted_unix_ms: int
    node_head: SignedHead | None
    report: VerifyReport
    # The incarnation that exported `head`, and the node's chains its earlier ones closed.
    incarnation: int = 0
    closed: tuple[ClosedChain, ...] = ()
    closed_omitted: int = 0

    @property
    def anchored(self) -> bool:
        return self.head is not None

    @property
    def verified(self) -> bool:
        return self.anchored and self.report.ok


def run_verification(client: Client, region: str, problems_max: int, progress: TextIO) -> Verification:
    record = client.audit_record(region)
    head = record.head if record is not None else None
    # The log of the node whose head is on record (a region may have several nodes, each with a
    # log of its own); the head is taken first, so a head the node exports meanwhile is not it.
    node_head, entries = client.read_audit_log(region, node_id=head.node_id if head is not None else None)
    report = verify_log(
        with_progress(entries, region, progress),
        head,
        trusted_public_key=head.public_key if head is not None else None,
        problems_max=problems_max,
    )
    if record is None:
        return Verification(region, None, 0, node_head, report)
    return Verification(
        region,
        head,
        record.accepted_unix_ms,
        node_head,
        report,
        record.incarnation,
        record.closed,
        record.closed_omitted,
    )


def head_json(head: SignedHead | None, accepted_unix_ms: int = 0) -> dict[str, Any] | None:
    if head is None:
        return None
    out: dict[str, Any] = {
        "region": head.region,
        "node_id": head.node_id,
        "size": head.size,
        "head": head.head.hex(),
        "time_unix_ms": head.time_ms,
        "time": iso_ms(head.time_ms),
        "public_key": head.public_key.hex(),
    }
    if accepted_unix_ms:
        out["accepted_unix_ms"] = accepted_unix_ms
        out["accepted"] = iso_ms(accepted_unix_ms)
    return out


def verification_json(v: Verification) -> dict[str, Any]:
    r = v.report
    return {
        "region": v.region,
        "verified": v.verified,
        "ok": r.ok,
        "anchored": v.anchored,
        "entries_checked": r.entries_checked,
        "anchored_size": r.anchored_size,
        "head": head_json(v.head, v.accepted_unix_ms),
        "node_head_size": v.node_head.size if v.node_head is not None else None,
        "incarnation": v.incarnation,
        "closed_chains": [closed_chain_json(c) for c in v.closed],
        "closed_chains_omitted": v.closed_omitted,
        "problems": [{"kind": p.kind, "seq": p.seq, "message": p.message} for p in r.problems],
        "problems_omitted": r.problems_omitted,
    }


def closed_chain_json(chain: ClosedChain) -> dict[str, Any]:
    return {
        "incarnation": chain.incarnation,
        "head": head_json(chain.head, chain.accepted_unix_ms),
        "closed_unix_ms": chain.closed_unix_ms,
        "closed": iso_ms(chain.closed_unix_ms),
    }


def closed_chain_text(chain: ClosedChain) -> str:
    return (
        f"incarnation {chain.incarnation}: {plural(chain.head.size, 'entry', 'entries')}, last head "
        f"signed at {iso_ms(chain.head.time_ms)}, closed at {iso_ms(chain.closed_unix_ms)}"
    )


def verification_text(v: Verification) -> str:
    r = v.report
    lines = [f"audit log of {v.region}", f"entries checked:  {r.entries_checked}"]
    if v.head is None:
        lines.append(
            f"anchored:         not anchored: the coordinator holds no exported audit head for "
            f"{v.region}, so nothing proves the log complete or unaltered"
        )
    else:
        covered = plural(v.head.size, "entry", "entries")
        accepted = (
            f", accepted by the coordinator at {iso_ms(v.accepted_unix_ms)}" if v.accepted_unix_ms else ""
        )
        lines.append(
            f"anchored:         {r.anchored_size} of {covered} covered by the head signed by "
            f"{v.head.node_id} at {iso_ms(v.head.time_ms)}{accepted}"
        )
    if v.node_head is not None:
        lines.append(f"node reports:     {plural(v.node_head.size, 'entry', 'entries')}")
    if v.closed or v.closed_omitted:
        closed = len(v.closed) + v.closed_omitted
        lines.append(
            f"incarnation:      {v.incarnation}; {plural(closed, 'earlier chain')} closed by a "
            "restore or a store put back from an older copy (their later entries are not in this log):"
        )
        if v.closed_omitted:
            lines.append(f"  ... {plural(v.closed_omitted, 'older chain')} not listed")
        lines.extend(f"  {closed_chain_text(c)}" for c in v.closed)
    elif v.incarnation:
        lines.append(f"incarnation:      {v.incarnation}")
    if r.problems:
        lines.append(f"problems ({len(r.problems) + r.problems_omitted}):")
        lines.append(table(["kind", "seq", "message"], [[p.kind, p.seq, p.message] for p in r.problems]))
        if r.problems_omitted:
            lines.append(f"... and {r.problems_omitted} more not listed (raise --problems-max)")
    if v.verified:
        lines.append("result:           ok")
    elif r.ok:
        lines.append("result:           not anchored (no problem in the chain itself)")
    else:
        lines.append(f"result:           FAILED: {plural(len(r.problems) + r.problems_omitted, 'problem')}")
    return "\n".join(lines)


def verify(args: argparse.Namespace) -> int:
    with Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        result = run_verification(client, args.region, args.problems_max, sys.stderr)
    if args.json:
        print_json(verification_json(result))
    else:
        print(verification_text(result))
    return EXIT_OK if result.verified else EXIT_PROBLEMS


# -- tail


@dataclass(frozen=True)
class TailRow:
    stored: StoredEntry
    entry: AuditEntry | None
    error: str = ""


def decode_rows(entries: Iterable[StoredEntry]) -> list[TailRow]:
    rows = []
    for stored in entries:
        try:
            rows.append(TailRow(stored, AuditEntry.decode(stored.body)))
        except DataCorruption as exc:
            # Showing the rest matters more than the one damaged entry; verify names the damage.
            rows.append(TailRow(stored, None, exc.message))
    return rows


def record_text(entry: AuditEntry) -> str:
    if entry.namespace and entry.key:
        return f"{entry.namespace}/{entry.key}"
    return entry.namespace or entry.key or "-"


def tail_text(region: str, rows: list[TailRow]) -> str:
    if not rows:
        return f"audit log of {region} is empty"
    cells: list[list[object]] = []
    for row in rows:
        e = row.entry
        if e is None:
            cells.append([row.stored.seq, "-", "-", "?", "-", "-", "-", f"undecodable entry: {row.error}"])
            continue
        cells.append(
            [
                row.stored.seq,
                iso_ms(e.time_ms),
                e.principal,
                e.action,
                record_text(e),
                e.decision or "-",
                e.rule or "-",
                e.detail or "-",
            ]
        )
    return table(["seq", "time", "principal", "action", "record", "decision", "rule", "detail"], cells)


def row_json(row: TailRow) -> dict[str, Any]:
    out: dict[str, Any] = {"seq": row.stored.seq, "hash": row.stored.hash.hex()}
    e = row.entry
    if e is None:
        out["error"] = row.error
        return out
    out.update(
        {
            "time_unix_ms": e.time_ms,
            "time": iso_ms(e.time_ms),
            "hlc": e.hlc,
            "region": e.region,
            "node_id": e.node_id,
            "principal": e.principal,
            "action": e.action,
            "namespace": e.namespace,
            "key": e.key,
            "subject": e.subject,
            "decision": e.decision,
            "rule": e.rule,
            "policy_version": e.policy_version,
            "detail": e.detail,
        }
    )
    return out


def tail(args: argparse.Namespace) -> int:
    with Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        head, entries = client.read_audit_log(args.region, limit=args.n, tail=True)
        rows = decode_rows(entries)
    if args.json:
        print_json(
            {
                "region": args.region,
                "node_head_size": head.size if head is not None else None,
                "entries": [row_json(r) for r in rows],
            }
        )
    else:
        print(tail_text(args.region, rows))
    return EXIT_OK
