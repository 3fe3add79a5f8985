"""How a node's backup is laid out in its bucket.

    <prefix>nodes/<node_id>/<generation>/manifest.json
    <prefix>nodes/<node_id>/<generation>/snapshot/<part:06d>
    <prefix>nodes/<node_id>/<generation>/segments/<first_lsn:016d>-<last_lsn:016d>

A generation is one consistent base snapshot of the store and the change-log segments shipped
after it; a restore needs one generation only. The manifest is written once the snapshot's
objects are all stored, so a generation without one is incomplete and never used. Every object
carries the sha256 of its body in its metadata (and the manifest lists the snapshot's), and the
metadata says nothing else but positions and times: no key, namespace or subject is named
outside the bodies, and in the bodies every value is still sealed under its subject's data key.

Generation names sort by creation time: <UTC yyyymmddThhmmss><milliseconds>Z-<8 hex>.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from domicile.errors import InvalidArgument

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SNAPSHOT_DIR = "snapshot"
SEGMENTS_DIR = "segments"
# Metadata keys (S3 lower-cases them): the body's sha256, and for segments their positions and
# the wall time (ms) of their newest write.
META_SHA256 = "sha256"
META_FIRST_LSN = "first-lsn"
META_LAST_LSN = "last-lsn"
META_NEWEST_MS = "newest-ms"

GENERATION_PATTERN = re.compile(r"\d{8}T\d{9}Z-[0-9a-f]{8}")
_SEGMENT_NAME = re.compile(r"(\d{16})-(\d{16})")
_LEN = struct.Struct(">I")
_LSN = struct.Struct(">Q")


def sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def generation_name(started_ms: int, suffix: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started_ms // 1000))
    return f"{stamp}{started_ms % 1000:03d}Z-{suffix}"


def node_prefix(prefix: str, node_id: str) -> str:
    return f"{prefix}nodes/{node_id}/"


def generation_prefix(prefix: str, node_id: str, generation: str) -> str:
    return f"{node_prefix(prefix, node_id)}{generation}/"


def snapshot_key(prefix: str, node_id: str, generation: str, part: int) -> str:
    return f"{generation_prefix(prefix, node_id, generation)}{SNAPSHOT_DIR}/{part:06d}"


def segment_key(prefix: str, node_id: str, generation: str, first_lsn: int, last_lsn: int) -> str:
    return f"{generation_prefix(prefix, node_id, generation)}{SEGMENTS_DIR}/{first_lsn:016d}-{last_lsn:016d}"


def manifest_key(prefix: str, node_id: str, generation: str) -> str:
    return f"{generation_prefix(prefix, node_id, generation)}{MANIFEST}"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """(first_lsn, last_lsn) of a segment object's last path element; None if it is not one."""
    match = _SEGMENT_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class SnapshotPart:
    key: str
    sha256: str
    bytes: int
    rows: int


@dataclass(frozen=True)
class Manifest:
    """What one generation's base snapshot holds.

    base_lsn: the node's change-log position read before the snapshot began; every local write
    up to it is in the snapshot, and segments start right after it. end_lsn: the position read
    once the snapshot was read through; writes between the two may or may not be in it
    (replaying them is harmless: a merge of a version already held changes nothing), so the
    generation restores exactly any point at or after end_lsn's time."""

    node_id: str
    region: str
    generation: str
    epoch: int
    started_ms: int
    finished_ms: int
    base_lsn: int
    end_lsn: int
    parts: tuple[SnapshotPart, ...] = field(default=())
    format: int = FORMAT_VERSION
    # The HLC before which the node had purged tombstones, read once the snapshot was read
    # through (so it covers every purge the snapshot reflects; 0 in a manifest from before it).
    purged_before_hlc: int = 0

    def to_json(self) -> bytes:
        data = asdict(self)
        data["parts"] = [asdict(p) for p in self.parts]
        return json.dumps(data, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, body: bytes) -> Manifest:
        data: dict[str, Any] = json.loads(body)
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"manifest format {data.get('format')!r}; this version reads {FORMAT_VERSION}")
        parts = tuple(SnapshotPart(**p) for p in data.pop("parts"))
        return cls(parts=parts, **data)


# -- bodies ------------------------------------------------------------------------------------


def frame_snapshot_row(namespace: str, key: str, state: bytes) -> bytes:
    ns, k = namespace.encode(), key.encode()
    return b"".join((_LEN.pack(len(ns)), ns, _LEN.pack(len(k)), k, _LEN.pack(len(state)), state))


def read_snapshot_rows(body: bytes) -> Iterator[tuple[str, str, bytes]]:
    # Unrolled over plain offsets: a restore reads every row of a store through here.
    unpack, size, end, at = _LEN.unpack_from, _LEN.size, len(body), 0
    while at < end:
        fields = []
        for _ in range(3):
            if at + size > end:
                raise ValueError(f"object body ends inside a record at byte {at}")
            (n,) = unpack(body, at)
            at += size
            if at + n > end:
                raise ValueError(f"object body ends inside a record at byte {at}")
            fields.append(body[at : at + n])
            at += n
        yield fields[0].decode(), fields[1].decode(), fields[2]


def frame_log_entry(lsn: int, mutation: bytes) -> bytes:
    return b"".join((_LSN.pack(lsn), _LEN.pack(len(mutation)), mutation))


def read_log_entries(body: bytes) -> Iterator[tuple[int, bytes]]:
    reader = _Reader(body)
    while not reader.done():
        lsn = reader.lsn()
        yield lsn, reader.chunk()


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body = memoryview(body)
        self.at = 0

    def done(self) -> bool:
        return self.at >= len(self.body)

    def _take(self, n: int) -> memoryview:
        if self.at + n > len(self.body):
            raise ValueError(f"object body ends inside a record at byte {self.at}")
        view = self.body[self.at : self.at + n]
        self.at += n
        return view

    def lsn(self) -> int:
        return int(_LSN.unpack(self._take(_LSN.size))[0])

    def chunk(self) -> bytes:
        (size,) = _LEN.unpack(self._take(_LEN.size))
        return bytes(self._take(size))


def parse_time(text: str) -> int:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"--to {text!r} is not an RFC 3339 time, e.g. 2026-12-01T14:05:00Z") from None
    if moment.tzinfo is None:
        raise InvalidArgument(f"--to {text!r} has no time zone; add Z or an offset such as +01:00")
    return int(moment.timestamp() * 1000)
