"""The group committer tells its key-change listener about every durable change before the
change is acknowledged: local writes, and jobs that are replicated applies."""

from __future__ import annotations

from pathlib import Path

import pytest

from domicile.errors import InvalidArgument
from domicile.hlc import HybridClock
from node.engine.base import LocalWrite, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.engine.sqlite import SQLiteEngine


async def test_listener_hears_local_writes_and_applies_before_they_are_acknowledged(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "a.sqlite3", "a", "eu-west-1", synchronous="OFF")
    peer = SQLiteEngine(tmp_path / "b.sqlite3", "b", "eu-west-1", synchronous="OFF")
    heard: list[list[tuple[str, str]]] = []
    committer = GroupCommitter(
        engine, HybridClock().now, batch_records_max=8, queue_records_max=64, on_keys_changed=heard.append
    )
    committer.start()
    try:
        await committer.submit(LocalWrite("ns", "k1", value=b"v"))
        assert heard == [[("ns", "k1")]]
        [made] = peer.commit_local([LocalWrite("ns", "k2", value=b"r")], HybridClock().now)
        assert not isinstance(made, Exception)
        m = made.mutation
        await committer.run(lambda e: e.apply_remote("b", [m], m.lsn))
        assert heard[-1] == [("ns", "k2")]
        # A duplicate changes nothing; a job that is not an apply is not a change.
        await committer.run(lambda e: e.apply_remote("b", [m], m.lsn))

        def meta(e: StorageEngine) -> None:
            e.put_meta("x", b"y")

        await committer.run(meta)
        # A refused write changes nothing either.
        with pytest.raises(InvalidArgument):
            await committer.submit(LocalWrite("ns", "k3", value=b"v", tombstone=True))
        assert len(heard) == 2
    finally:
        await committer.stop()
        engine.close()
        peer.close()


async def test_a_failing_listener_does_not_fail_the_write(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "a.sqlite3", "a", "eu-west-1", synchronous="OFF")

    def broken(keys: list[tuple[str, str]]) -> None:
        raise RuntimeError("listener bug")

    committer = GroupCommitter(
        engine, HybridClock().now, batch_records_max=8, queue_records_max=64, on_keys_changed=broken
    )
    committer.start()
    try:
        committed = await committer.submit(LocalWrite("ns", "k1", value=b"v"))
        assert committed.mutation.key == "k1" and engine.get("ns", "k1") is not None
    finally:
        await committer.stop()
        engine.close()
