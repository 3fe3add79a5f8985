"""One `replicate_send` audit entry per batch for the records that need no entry of their own.

A source decides every record it sends, on every link, and used to append one audit entry per
record and link: at 1,000 writes/s to six regions, 5,000 entries/s to build, hash, write and
fsync at the source alone. A record that is allowed, not personal and not redacted
(Enforcer.decide with always_audit=False returns no entry for it) says nothing in its own entry
that the batch cannot say for all of them: same link, same namespace, same rule, same policy
version. Such records get one entry per batch and (namespace, rule, policy version):

    action replicate_send, decision allow, namespace, rule, policy_version, no key, and
    detail "to=TARGET batch records=N lsns=A-B,C,D-E sha256=HEX"

`lsns` names the change-log positions it covers and `sha256` is the digest of their positions
and keys (batch_digest), so the per-record entries can be derived and checked: from the source's
change log while it holds those positions, and at any time from the target's per-record
`replicate_receive` entries (each names its key and, in its detail, `lsn=`). A personal record,
a redacted one and every withheld one keep their own entry, exactly as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from domicile.audit import TEXT_CHARS_MAX

# Ranges of positions named in one entry: a batch is usually one run; many interleaved
# namespaces split it into several entries, each within the audit text limit.
RANGES_PER_ENTRY_MAX = 16
_MARK = "batch"


def batch_digest(records: Iterable[tuple[int, str]]) -> str:
    """The sha256 (hex) of (position, key) pairs in position order: each pair length-prefixed,
    so no key can be read as two."""
    h = hashlib.sha256()
    for lsn, key in records:
        raw = key.encode("utf-8", "surrogatepass")
        h.update(f"{lsn}:{len(raw)}:".encode())
        h.update(raw)
    return h.hexdigest()


def _ranges(lsns: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lsn in lsns:
        if out and lsn == out[-1][1] + 1:
            out[-1] = (out[-1][0], lsn)
        else:
            out.append((lsn, lsn))
    return out


def _format_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


@dataclass(frozen=True)
class BatchSend:
    """What a batch entry's detail says."""

    target: str
    records: int
    ranges: tuple[tuple[int, int], ...]
    digest: str

    def lsns(self) -> Iterator[int]:
        for a, b in self.ranges:
            yield from range(a, b + 1)

    def detail(self) -> str:
        return (
            f"to={self.target} {_MARK} records={self.records} lsns={_format_ranges(self.ranges)} "
            f"sha256={self.digest}"
        )


def parse(detail: str) -> BatchSend | None:
    """The batch entry a detail describes; None for any other detail (a per-record entry)."""
    parts = detail.split(" ")
    if len(parts) != 5 or parts[1] != _MARK:
        return None
    fields = dict(p.split("=", 1) for p in (parts[0], *parts[2:]) if "=" in p)
    try:
        ranges: list[tuple[int, int]] = []
        for item in fields["lsns"].split(","):
            a, _, b = item.partition("-")
            ranges.append((int(a), int(b or a)))
        return BatchSend(fields["to"], int(fields["records"]), tuple(ranges), fields["sha256"])
    except (KeyError, ValueError):
        return None


def verify(batch: BatchSend, records: Sequence[tuple[int, str]]) -> str:
    """What is wrong with `records` ((position, key), as derived from a change log or from the
    target's receive entries) as the records the batch entry covers; empty when they match."""
    lsns = [lsn for lsn, _ in records]
    if lsns != list(batch.lsns()):
        return (
            f"the records are at positions {_format_ranges(_ranges(lsns))}; "
            f"the entry names {_format_ranges(batch.ranges)}"
        )
    if len(records) != batch.records:
        return f"{len(records)} records; the entry counts {batch.records}"
    if batch_digest(records) != batch.digest:
        return "the positions and keys do not match the entry's sha256"
    return ""


@dataclass
class _Group:
    records: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class SentBatch:
    """The records of one outgoing batch that share batch entries, grouped as their entries:
    by (namespace, rule, policy version)."""

    target: str
    _groups: dict[tuple[str, str, str], _Group] = field(default_factory=dict)

    def add(self, namespace: str, rule: str, policy_version: str, lsn: int, key: str) -> None:
        group = self._groups.get((namespace, rule, policy_version))
        if group is None:
            group = self._groups[(namespace, rule, policy_version)] = _Group()
        group.records.append((lsn, key))

    def __bool__(self) -> bool:
        return bool(self._groups)

    def entries(self) -> Iterator[tuple[str, str, str, str]]:
        """(namespace, rule, policy version, detail) of each batch entry to record."""
        for (namespace, rule, version), group in self._groups.items():
            records = group.records
            start = 0
            while start < len(records):
                ranges = 0
                end = start
                while end < len(records):
                    if end == start or records[end][0] != records[end - 1][0] + 1:
                        if ranges == RANGES_PER_ENTRY_MAX:
                            break
                        ranges += 1
                    end += 1
                part = records[start:end]
                lsns = [lsn for lsn, _ in part]
                detail = BatchSend(self.target, len(part), tuple(_ranges(lsns)), batch_digest(part)).detail()
                if len(detail) > TEXT_CHARS_MAX:  # cannot happen within the range bound; never cut
                    raise ValueError(f"batch audit detail of {len(detail)} characters")
                yield namespace, rule, version, detail
                start = end
