"""What the audit log's tests share: one node's entries and a log opened on a fresh directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domicile.audit import AuditEntry
from domicile.hlc import HybridClock
from node.compliance.audit_log import AuditLog, load_or_create_keys

REGION = "eu-west-1"
NODE = "eu-west-1-a"


def entry(key: str) -> AuditEntry:
    """An allowed Put of `key` in namespace orders, not yet numbered."""
    return AuditEntry(0, 1, 1, REGION, NODE, "client:peer", "put", "orders", key, decision="allow")


def group(first_lsn: int, count: int) -> list[tuple[int, AuditEntry]]:
    """The (change-log position, entry) pairs a group commit of `count` writes hands the log."""
    return [(lsn, entry(f"k{lsn}")) for lsn in range(first_lsn, first_lsn + count)]


def new_audit_log(tmp_path: Path, **options: Any) -> AuditLog:
    """An audit log of NODE in tmp_path (its keys in tmp_path/keys), not started yet; `options`
    are AuditLog's keyword arguments beyond the node's and its keys."""
    signing, subject = load_or_create_keys(tmp_path / "keys")
    return AuditLog(
        tmp_path / "audit.sqlite3",
        region=REGION,
        node_id=NODE,
        signing_key=signing,
        subject_key=subject,
        hlc=HybridClock().now,
        **options,
    )
