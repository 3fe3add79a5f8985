"""The consistent snapshot every engine offers backups: every stored key state as of the moment
it began, in key order, however the store changes while it is read."""

from __future__ import annotations

from collections.abc import Callable

from domicile.wire.records import key_state_from_bytes
from node.engine.base import LocalWrite, StorageEngine

from .harness import commit_ok

Stamp = Callable[[], int]


def test_a_snapshot_holds_every_state_as_of_its_start_in_key_order(
    engine: StorageEngine, stamp: Stamp
) -> None:
    commit_ok(engine, stamp, *(LocalWrite("b", f"k{i:02}", b"before") for i in range(20)))
    commit_ok(engine, stamp, LocalWrite("a", "only", b"x"), LocalWrite("b", "k05", tombstone=True))
    expected = [("a", "only")] + [("b", f"k{i:02}") for i in range(20)]
    with engine.snapshot() as rows:
        first = next(rows)
        # Written while the snapshot is read: not in it.
        commit_ok(engine, stamp, LocalWrite("b", "k10", b"after"), LocalWrite("c", "new", b"after"))
        seen = [first, *rows]
    assert [(ns, key) for ns, key, _ in seen] == expected
    states = {(ns, key): key_state_from_bytes(blob) for ns, key, blob in seen}
    assert not states[("b", "k05")].has_live() and states[("b", "k05")].versions  # tombstones are in it
    assert [v.value for v in states[("b", "k10")].live()] == [b"before"]
    assert engine.get("b", "k10") is not None and [v.value for v in engine.get("b", "k10").live()] == [
        b"after"
    ]  # type: ignore[union-attr]
