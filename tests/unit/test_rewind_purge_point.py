"""A store rebuilt as a new incarnation keeps the point before which its tombstones were purged
(regression: it started from 0, and the bootstraps it served then pruned nothing at their
targets, which kept what the purged tombstones had deleted)."""

from __future__ import annotations

from pathlib import Path

from domicile.hlc import pack
from node.engine.base import LocalWrite
from node.engine.factory import SQLITE_FILE
from node.engine.sqlite import SQLiteEngine
from node.incarnation import read_epoch
from node.rewind import reincarnate

T0 = 1_800_000_000_000


def test_a_rewound_store_keeps_its_purge_point(tmp_path: Path) -> None:
    engine = SQLiteEngine(str(tmp_path / SQLITE_FILE), "n1", "eu-west-1", synchronous="OFF")
    engine.commit_local([LocalWrite("ns", "gone", b"v")], lambda: pack(T0, 0))
    engine.commit_local([LocalWrite("ns", "gone", tombstone=True)], lambda: pack(T0 + 1, 0))
    cutoff = pack(T0 + 2, 0)
    assert engine.purge_tombstones("ns", ["gone"], lambda _key, _state: True, cutoff) == 1
    reincarnate(engine, tmp_path, "n1", "eu-west-1", 1, "topology")
    assert read_epoch(tmp_path) == 1
    rebuilt = SQLiteEngine(str(tmp_path / SQLITE_FILE), "n1.1", "eu-west-1")
    try:
        assert rebuilt.purged_before() == cutoff
    finally:
        rebuilt.close()
