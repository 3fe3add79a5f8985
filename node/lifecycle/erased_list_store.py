"""The cluster's permanent list of erased subjects as a node keeps it in its store (JSON meta
values), so that a restart, or a restore from a backup taken after it was stored, knows every
erased subject before the coordinator is heard from.

A list of up to CHUNK_ENTRIES entries is one value, {"key": hex, "subjects": [[hash, request id],
...]}, as it always was. A longer one is larger than one meta value may be (about 90 bytes an
entry), so it is kept in chunks, in one of two slots: the chunks are written to the slot not in
use, then the header {"key": hex, "slot": s, "chunks": n} is switched. Each write is durable
before the next starts, so a crash leaves the header naming the old, complete list.
"""

from __future__ import annotations

import json
from typing import Any

from domicile.errors import DataCorruption
from node.engine.base import StorageEngine

ERASED_LIST_META = "erased_subjects"
# About 1.8 MB of JSON, well under the 4 MiB a meta value may be.
CHUNK_ENTRIES = 20_000
SLOTS = ("a", "b")


def _chunk_name(slot: str, index: int) -> str:
    return f"{ERASED_LIST_META}.{slot}.{index}"


def _pairs(value: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    ):
        raise DataCorruption(f"stored list of erased subjects ({where}) is not a list of [hash, request id]")
    return [(p[0], p[1]) for p in value]


def load_erased_list(engine: StorageEngine) -> tuple[bytes, dict[str, str]] | None:
    """The key and (subject hash -> request id) of the list last stored, in the order it was
    stored; None when none was. Blocks (store reads)."""
    raw = engine.get_meta(ERASED_LIST_META)
    if not raw:
        return None
    header = json.loads(raw)
    key = bytes.fromhex(header["key"])
    if "subjects" in header:
        return key, dict(_pairs(header["subjects"], ERASED_LIST_META))
    entries: dict[str, str] = {}
    for index in range(int(header["chunks"])):
        name = _chunk_name(str(header["slot"]), index)
        chunk = engine.get_meta(name)
        if chunk is None:
            raise DataCorruption(f"stored list of erased subjects lacks its chunk {name}")
        entries.update(_pairs(json.loads(chunk), name))
    return key, entries


def store_erased_list(engine: StorageEngine, key: bytes, entries: list[tuple[str, str]]) -> None:
    """Stores the list (subject hash, request id pairs) in place of the one stored. Blocks
    (store writes); run on the writer."""
    if len(entries) <= CHUNK_ENTRIES:
        engine.put_meta(ERASED_LIST_META, json.dumps({"key": key.hex(), "subjects": entries}).encode())
        return
    raw = engine.get_meta(ERASED_LIST_META)
    in_use = json.loads(raw).get("slot") if raw else None
    slot = SLOTS[1] if in_use == SLOTS[0] else SLOTS[0]
    chunks = [entries[i : i + CHUNK_ENTRIES] for i in range(0, len(entries), CHUNK_ENTRIES)]
    for index, chunk in enumerate(chunks):
        engine.put_meta(_chunk_name(slot, index), json.dumps(chunk).encode())
    header = {"key": key.hex(), "slot": slot, "chunks": len(chunks)}
    engine.put_meta(ERASED_LIST_META, json.dumps(header).encode())
