"""The cluster's permanent list of erased subjects on the wire: the pages of one read of
CoordinatorService.ListErasedSubjects gathered on the node, and whether the read saw the list
whole.

The list is in the order erasure requests were opened, and a request joins it when it
completes, so an older request that completes while a node pages lands behind the node's
position. Entries never leave the list, so a read that gathered as many entries as the list had
at its last page has them all; one that gathered fewer missed such a late completion and is
read again.
"""

from __future__ import annotations

from domicile.v1 import coordinator_pb2 as cpb


class ErasedListRead:
    """One read of the list, page after page."""

    def __init__(self) -> None:
        self.key = b""
        # request id -> subject hash: a page read twice adds nothing.
        self._entries: dict[str, str] = {}
        self._total = 0
        self._key_changed = False

    def add(self, page: cpb.ListErasedSubjectsResponse) -> str:
        """Takes a page; the after_request_id of the next one, "" when this was the last."""
        key = bytes(page.erased_subjects_key)
        if key and self.key and key != self.key:
            # The coordinator's state was replaced under the read (a restore): hashes under two
            # keys do not make one list.
            self._key_changed = True
        self.key = key or self.key
        for entry in page.erased_subjects:
            self._entries[entry.request_id] = entry.subject_hash
        self._total = page.erased_total
        return page.next_after_request_id

    def whole(self) -> bool:
        """After the last page: the read holds every entry the list had at that page."""
        return not self._key_changed and len(self._entries) >= self._total

    def entries(self) -> list[tuple[str, str]]:
        """(subject hash, request id) of every entry read."""
        return [(digest, request_id) for request_id, digest in self._entries.items()]
