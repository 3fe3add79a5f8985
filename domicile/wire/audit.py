"""Audit log types on the wire: domicile.audit <-> domicile.v1 AuditRecord / SignedAuditHead /
ClosedAuditChain.

Used by the node (ReadAuditLog), the coordinator (ExportAuditHead / GetAuditHead) and the SDK,
so that every side encodes a head the same way. Nothing is checked here beyond the shape of the
message: hashes and signatures are judged by domicile.audit.verify_log and
SignedHead.signature_valid, which say what is wrong in terms a person can act on.
"""

from __future__ import annotations

from collections.abc import Sequence

from domicile.audit import ClosedChain, SignedHead, StoredEntry
from domicile.v1 import audit_pb2 as apb
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import storage_node_pb2 as spb


def entry_to_pb(entry: StoredEntry, out: apb.AuditRecord | None = None) -> apb.AuditRecord:
    msg = out if out is not None else apb.AuditRecord()
    msg.seq = entry.seq
    msg.body = entry.body
    msg.hash = entry.hash
    return msg


def entry_from_pb(msg: apb.AuditRecord) -> StoredEntry:
    return StoredEntry(seq=msg.seq, body=msg.body, hash=msg.hash)


def head_to_pb(head: SignedHead, out: apb.SignedAuditHead | None = None) -> apb.SignedAuditHead:
    msg = out if out is not None else apb.SignedAuditHead()
    msg.region = head.region
    msg.node_id = head.node_id
    msg.size = head.size
    msg.head = head.head
    msg.time_unix_ms = head.time_ms
    msg.public_key = head.public_key
    msg.signature = head.signature
    return msg


def head_from_pb(msg: apb.SignedAuditHead) -> SignedHead:
    return SignedHead(
        region=msg.region,
        node_id=msg.node_id,
        size=msg.size,
        head=msg.head,
        time_ms=msg.time_unix_ms,
        public_key=msg.public_key,
        signature=msg.signature,
    )


def closed_chain_to_pb(chain: ClosedChain, out: cpb.ClosedAuditChain) -> cpb.ClosedAuditChain:
    head_to_pb(chain.head, out.head)
    out.incarnation = chain.incarnation
    out.accepted_unix_ms = chain.accepted_unix_ms
    out.closed_unix_ms = chain.closed_unix_ms
    return out


def closed_chain_from_pb(msg: cpb.ClosedAuditChain) -> ClosedChain:
    return ClosedChain(head_from_pb(msg.head), msg.incarnation, msg.accepted_unix_ms, msg.closed_unix_ms)


def head_to_bytes(head: SignedHead) -> bytes:
    return head_to_pb(head).SerializeToString()


def head_from_bytes(data: bytes) -> SignedHead:
    return head_from_pb(apb.SignedAuditHead.FromString(data))


def audit_page_from_pb(
    msgs: Sequence[spb.ReadAuditLogResponse],
) -> tuple[SignedHead | None, list[StoredEntry]]:
    """The head (sent in the first message of a ReadAuditLog stream) and the entries of a page."""
    head: SignedHead | None = None
    entries: list[StoredEntry] = []
    for msg in msgs:
        if head is None and msg.HasField("head"):
            head = head_from_pb(msg.head)
        entries.extend(entry_from_pb(r) for r in msg.records)
    return head, entries
