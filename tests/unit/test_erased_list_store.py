"""The permanent list of erased subjects kept in a node's store (a real SQLite engine), and the
pages of one read of it gathered (domicile/wire/erased_subjects.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from domicile.v1 import coordinator_pb2 as cpb
from domicile.wire.erased_subjects import ErasedListRead
from node.engine.sqlite import META_VALUE_BYTES_MAX, SQLiteEngine
from node.lifecycle.erased_list_store import (
    CHUNK_ENTRIES,
    ERASED_LIST_META,
    load_erased_list,
    store_erased_list,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def entries(count: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"{n:064x}", f"req-{n:010x}") for n in range(start, start + count)]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[SQLiteEngine]:
    e = SQLiteEngine(tmp_path / "node.sqlite", "eu-west-1", "eu-west-1")
    yield e
    e.close()


class HeaderWriteFails:
    """The engine, with the store crashing before the header is switched."""

    def __init__(self, engine: SQLiteEngine) -> None:
        self.engine = engine

    def get_meta(self, name: str) -> bytes | None:
        return self.engine.get_meta(name)

    def put_meta(self, name: str, value: bytes) -> None:
        if name == ERASED_LIST_META:
            raise OSError("the machine stopped")
        self.engine.put_meta(name, value)


def test_a_short_list_is_one_value_as_older_nodes_stored_it(engine: SQLiteEngine) -> None:
    assert load_erased_list(engine) is None
    listed = entries(3)
    store_erased_list(engine, KEY, listed)
    raw = engine.get_meta(ERASED_LIST_META)
    assert raw is not None and json.loads(raw) == {"key": KEY.hex(), "subjects": [list(e) for e in listed]}
    assert load_erased_list(engine) == (KEY, dict(listed))
    store_erased_list(engine, KEY, [])
    assert load_erased_list(engine) == (KEY, {})


def test_a_list_larger_than_a_meta_value_is_kept_in_chunks_and_switched_whole(engine: SQLiteEngine) -> None:
    first = entries(3 * CHUNK_ENTRIES + 5)
    # Negative control: as one value, the list is more than the store takes.
    assert len(json.dumps({"key": KEY.hex(), "subjects": first}).encode()) > META_VALUE_BYTES_MAX
    store_erased_list(engine, KEY, first)
    assert load_erased_list(engine) == (KEY, dict(first))

    # A longer list goes to the other slot; the store crashing before the header is switched
    # leaves the old list whole.
    second = entries(3 * CHUNK_ENTRIES + 9)
    with pytest.raises(OSError):
        store_erased_list(HeaderWriteFails(engine), KEY, second)  # type: ignore[arg-type]
    assert load_erased_list(engine) == (KEY, dict(first))
    store_erased_list(engine, KEY, second)
    assert load_erased_list(engine) == (KEY, dict(second))
    # And back to the first slot, under a new key, shorter.
    third = entries(CHUNK_ENTRIES + 1, start=7)
    store_erased_list(engine, OTHER_KEY, third)
    assert load_erased_list(engine) == (OTHER_KEY, dict(third))


def page(key: bytes, listed: list[tuple[str, str]], after: str, total: int) -> cpb.ListErasedSubjectsResponse:
    return cpb.ListErasedSubjectsResponse(
        erased_subjects_key=key,
        erased_subjects=[cpb.ErasedSubject(subject_hash=h, request_id=r) for h, r in listed],
        next_after_request_id=after,
        erased_total=total,
    )


def test_a_read_is_whole_only_with_every_entry_under_one_key() -> None:
    listed = entries(4)
    read = ErasedListRead()
    assert read.add(page(KEY, listed[:2], listed[1][1], 4)) == listed[1][1]
    # A page read twice (a retried call) adds nothing.
    read.add(page(KEY, listed[:2], listed[1][1], 4))
    assert read.add(page(KEY, listed[2:], "", 4)) == ""
    assert read.whole() and read.key == KEY and sorted(read.entries()) == listed

    # An entry completed behind the reader: the last page counts five.
    behind = ErasedListRead()
    behind.add(page(KEY, listed[:2], listed[1][1], 4))
    behind.add(page(KEY, listed[2:], "", 5))
    assert not behind.whole()

    # The coordinator's state replaced under the read: hashes under two keys.
    replaced = ErasedListRead()
    replaced.add(page(KEY, listed[:2], listed[1][1], 4))
    replaced.add(page(OTHER_KEY, listed[2:], "", 4))
    assert not replaced.whole()

    # Nothing erased: one empty page without a key is whole.
    empty = ErasedListRead()
    assert empty.add(page(b"", [], "", 0)) == "" and empty.whole() and empty.entries() == []
