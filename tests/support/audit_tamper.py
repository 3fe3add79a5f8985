"""Tamperings of a node's audit SQLite file, done as an intruder with write access would: through
a separate sqlite3 connection, behind the node's back. Tests use them to check that
verification names each kind of damage.

Each function commits before returning; the node may keep the file open (WAL).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from domicile.audit import GENESIS, AuditEntry, chain_hash


@contextlib.contextmanager
def _tx(path: Path | str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def _row(conn: sqlite3.Connection, seq: int) -> tuple[bytes, bytes]:
    row = conn.execute("SELECT body, hash FROM audit WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        raise LookupError(f"the audit file has no entry {seq}")
    return bytes(row[0]), bytes(row[1])


def flip_body_byte(path: Path | str, seq: int, offset: int | None = None) -> None:
    """Flips the low bit of one byte of entry seq's body (the middle byte by default)."""
    with _tx(path) as conn:
        body, _ = _row(conn, seq)
        at = len(body) // 2 if offset is None else offset
        damaged = bytearray(body)
        damaged[at] ^= 0x01
        conn.execute("UPDATE audit SET body = ? WHERE seq = ?", (bytes(damaged), seq))


def flip_hash_byte(path: Path | str, seq: int) -> None:
    """Flips the low bit of the first byte of entry seq's stored hash."""
    with _tx(path) as conn:
        _, stored = _row(conn, seq)
        conn.execute("UPDATE audit SET hash = ? WHERE seq = ?", (bytes([stored[0] ^ 0x01]) + stored[1:], seq))


def delete_entry(path: Path | str, seq: int) -> None:
    """Deletes entry seq, leaving a gap."""
    with _tx(path) as conn:
        _row(conn, seq)
        conn.execute("DELETE FROM audit WHERE seq = ?", (seq,))


def swap_entries(path: Path | str, a: int, b: int) -> None:
    """Exchanges the bodies and hashes of entries a and b (each row keeps its seq)."""
    with _tx(path) as conn:
        body_a, hash_a = _row(conn, a)
        body_b, hash_b = _row(conn, b)
        conn.execute("UPDATE audit SET body = ?, hash = ? WHERE seq = ?", (body_b, hash_b, a))
        conn.execute("UPDATE audit SET body = ?, hash = ? WHERE seq = ?", (body_a, hash_a, b))


def truncate(path: Path | str, keep: int) -> None:
    """Deletes every entry after the first `keep`."""
    with _tx(path) as conn:
        conn.execute("DELETE FROM audit WHERE seq > ?", (keep,))


def rewrite_chain(path: Path | str, seq: int, new_detail: str) -> None:
    """Changes entry seq's detail and recomputes every hash from it to the end, so that the chain
    is internally consistent again: only a head exported earlier can tell."""
    with _tx(path) as conn:
        body, _ = _row(conn, seq)
        entry = replace(AuditEntry.decode(body), detail=new_detail)
        conn.execute("UPDATE audit SET body = ? WHERE seq = ?", (entry.encode(), seq))
        before = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq - 1,)).fetchone()
        prev = GENESIS if before is None else bytes(before[0])
        rows = conn.execute("SELECT seq, body FROM audit WHERE seq >= ? ORDER BY seq", (seq,)).fetchall()
        for row_seq, row_body in rows:
            prev = chain_hash(prev, bytes(row_body))
            conn.execute("UPDATE audit SET hash = ? WHERE seq = ?", (prev, row_seq))
