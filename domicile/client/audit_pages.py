"""Reading an audit log page by page, each page one call with its own deadline."""

from __future__ import annotations

from domicile.audit import SignedHead, StoredEntry
from domicile.errors import InvalidArgument
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.limits import AUDIT_PAGE_ENTRIES_MAX, AUDIT_TAIL_ENTRIES_MAX
from domicile.wire.requests import check_region_name


class AuditCursor:
    """Where a paged read of an audit log stands: the next request and when it is done.

    Pages go by seq: page k asks for the entries after `after_seq`, at most page_entries seq
    positions. A page may hold fewer entries (entries deleted from the log leave gaps) or run a
    little past them, so the next page starts after both. The read ends at the size of the head
    the first page carried: each page is itself audited, so a read that chased the growing end
    of the log could go on for ever.
    """

    def __init__(self, region: str, after_seq: int, limit: int, tail: bool, page_entries: int) -> None:
        check_region_name(region)
        if after_seq < 0:
            raise InvalidArgument(f"after_seq is {after_seq}; it must be 0 or more")
        if limit < 0:
            raise InvalidArgument(f"limit is {limit}; use 0 (every entry) or more")
        if tail and not 1 <= limit <= AUDIT_TAIL_ENTRIES_MAX:
            raise InvalidArgument(f"a tail read needs a limit of 1 to {AUDIT_TAIL_ENTRIES_MAX}; got {limit}")
        if not 1 <= page_entries <= AUDIT_PAGE_ENTRIES_MAX:
            raise InvalidArgument(f"page_entries is {page_entries}; use 1 to {AUDIT_PAGE_ENTRIES_MAX}")
        self.region = region
        self.after_seq = after_seq
        self.remaining: int | None = limit or None
        self.tail = tail
        self.page_entries = page_entries
        self.end_seq: int | None = None
        self.done = False
        self._requested = 0

    def request(self) -> spb.ReadAuditLogRequest:
        if self.tail:
            return spb.ReadAuditLogRequest(limit=self.remaining or 0, tail=True)
        self._requested = min(self.page_entries, self.remaining or self.page_entries)
        return spb.ReadAuditLogRequest(after_seq=self.after_seq, limit=self._requested)

    def advance(self, head: SignedHead | None, entries: list[StoredEntry]) -> list[StoredEntry]:
        """Takes in a page; returns its entries that belong to the read."""
        if self.tail:
            self.done = True
            return entries
        if self.end_seq is None:
            self.end_seq = head.size if head is not None else None
        if self.end_seq is not None:
            entries = [e for e in entries if e.seq <= self.end_seq]
        if self.remaining is not None:
            entries = entries[: self.remaining]
            self.remaining -= len(entries)
        self.after_seq = max([self.after_seq + self._requested, *(e.seq for e in entries)])
        if self.remaining == 0:
            self.done = True
        elif self.end_seq is not None:
            self.done = self.after_seq >= self.end_seq
        else:
            # Without a head, only an empty page says where the log ends.
            self.done = not entries
        return entries

    def what(self) -> str:
        return f"read audit log of {self.region}"
