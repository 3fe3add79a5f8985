"""Audit log types on the wire: domicile.audit <-> domicile.v1 AuditRecord / SignedAuditHead.

Used by the node (ReadAuditLog), the coordinator (ExportAuditHead / GetAuditHead) and the SDK,
so that every side encodes a head the same way. Nothing is checked here beyond the shape of the
message: hashes and signatures are judged by domicile.audit.verify_log and
SignedHead.signature_valid, which say what is wrong in terms a person can act on.
"""

from __future__ import annotations

from domicile.audit import SignedHead, StoredEntry
from domicile.v1 import audit_pb2 as apb


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
