"""What only the SQLite engine promises: its file, its pragmas, and detecting damage to the
bytes it stored (damaged here through raw SQL, as a failing disk would)."""

from __future__ import annotations

import gc
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.audit import AuditEntry
from domicile.errors import DataCorruption, FailedPrecondition, InvalidArgument
from domicile.sqlite_checkpoint import EVERY_ROWS_DEFAULT
from node.engine.backend import WriteTx
from node.engine.base import Committed, LocalWrite
from node.engine.sqlite import (
    META_VALUE_BYTES_MAX,
    PAGE_BYTES,
    SCHEMA_VERSION,
    SQLiteEngine,
    prefix_upper_bound,
)

from .harness import NODE, REGION, commit_ok

Stamp = Callable[[], int]
VALUE = b"the quick brown fox"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node.sqlite"


@pytest.fixture
def engine(db: Path) -> Iterator[SQLiteEngine]:
    e = SQLiteEngine(db, NODE, REGION)
    yield e
    e.close()


def _flip_value_byte(db: Path, sql_select: str, sql_update: str, params: tuple[object, ...]) -> None:
    raw = sqlite3.connect(db)
    try:
        (blob,) = raw.execute(sql_select, params).fetchone()
        at = blob.index(VALUE) + 4
        damaged = blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]
        raw.execute(sql_update, (damaged, *params))
        raw.commit()
    finally:
        raw.close()


def _damage_state(db: Path, namespace: str, key: str) -> None:
    _flip_value_byte(
        db,
        "SELECT state FROM kv WHERE namespace = ? AND key = ?",
        "UPDATE kv SET state = ? WHERE namespace = ? AND key = ?",
        (namespace, key),
    )


def test_a_flipped_byte_in_a_stored_value_is_detected_on_every_read_path(
    engine: SQLiteEngine, db: Path, stamp: Stamp
) -> None:
    commit_ok(engine, stamp, LocalWrite("orders", "o-1", VALUE), LocalWrite("orders", "o-2", b"fine"))
    _damage_state(db, "orders", "o-1")
    with pytest.raises(DataCorruption, match="orders/o-1"):
        engine.get("orders", "o-1")
    with pytest.raises(DataCorruption, match="orders/o-1"):
        engine.scan("orders", "", "", 10)
    with pytest.raises(DataCorruption, match="orders/o-1"):
        engine.get_many("orders", ["o-2", "o-1"])
    assert engine.get("orders", "o-2") is not None
    # A write to the damaged key is refused in its slot; the rest of the batch commits.
    results = engine.commit_local(
        [LocalWrite("orders", "o-1", b"new"), LocalWrite("orders", "o-3", b"x")], stamp
    )
    assert isinstance(results[0], DataCorruption) and "orders/o-1" in str(results[0])
    assert isinstance(results[1], Committed) and results[1].mutation.lsn == 3
    # Replicated writes to it are refused too, and the batch is not applied.
    other = SQLiteEngine(db.with_name("other.sqlite"), "node-b", REGION)
    try:
        commit_ok(other, stamp, LocalWrite("orders", "o-1", b"remote"))
        with pytest.raises(DataCorruption, match="orders/o-1"):
            engine.apply_remote("node-b", other.read_log(0, 10), 1)
        assert engine.inbound_position("node-b") == 0
    finally:
        other.close()


def test_a_flipped_byte_in_the_change_log_is_detected(engine: SQLiteEngine, db: Path, stamp: Stamp) -> None:
    commit_ok(engine, stamp, LocalWrite("orders", "o-0", b"x"), LocalWrite("orders", "o-1", VALUE))
    _flip_value_byte(
        db,
        "SELECT mutation FROM changelog WHERE lsn = ?",
        "UPDATE changelog SET mutation = ? WHERE lsn = ?",
        (2,),
    )
    with pytest.raises(DataCorruption, match="change-log entry 2"):
        engine.read_log(0, 10)
    assert len(engine.read_log(0, 1)) == 1


def test_undecodable_bytes_are_reported_as_corruption(engine: SQLiteEngine, db: Path, stamp: Stamp) -> None:
    commit_ok(engine, stamp, LocalWrite("orders", "o-1", VALUE))
    raw = sqlite3.connect(db)
    raw.execute("UPDATE kv SET state = x'ffffffff'")
    raw.commit()
    raw.close()
    with pytest.raises(DataCorruption, match="orders/o-1"):
        engine.get("orders", "o-1")


def test_the_database_uses_wal_and_the_requested_synchronous_mode(db: Path) -> None:
    for mode, level in (("FULL", 2), ("normal", 1), ("OFF", 0)):
        engine = SQLiteEngine(db, NODE, REGION, synchronous=mode)
        try:
            conns = [engine._writer, engine._reader()]
            assert [c.execute("PRAGMA synchronous").fetchone()[0] for c in conns] == [level, level]
            assert engine._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert engine._writer.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        finally:
            engine.close()


@pytest.mark.parametrize("mode", ["EXTRA", "", "fast"])
def test_an_unknown_synchronous_mode_is_refused(db: Path, mode: str) -> None:
    with pytest.raises(InvalidArgument, match="FULL"):
        SQLiteEngine(db, NODE, REGION, synchronous=mode)


@pytest.mark.parametrize("path", [":memory:", "", "file:x?mode=memory"])
def test_a_path_that_is_not_a_file_is_refused(path: str) -> None:
    with pytest.raises(InvalidArgument):
        SQLiteEngine(path, NODE, REGION)


def test_bad_node_id_or_region_is_refused(db: Path) -> None:
    with pytest.raises(InvalidArgument):
        SQLiteEngine(db, "Node A", REGION)
    with pytest.raises(InvalidArgument):
        SQLiteEngine(db, NODE, "")


def test_a_database_is_reopened_only_by_its_node(db: Path) -> None:
    SQLiteEngine(db, NODE, REGION).close()
    with pytest.raises(FailedPrecondition, match="node_id"):
        SQLiteEngine(db, "node-z", REGION)
    with pytest.raises(FailedPrecondition, match="region"):
        SQLiteEngine(db, NODE, "us-east-1")
    SQLiteEngine(db, NODE, REGION).close()


def test_a_newer_schema_is_refused(db: Path) -> None:
    SQLiteEngine(db, NODE, REGION).close()
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(FailedPrecondition, match="schema version 99"):
        SQLiteEngine(db, NODE, REGION)


def test_limits_on_meta_and_page_sizes(engine: SQLiteEngine) -> None:
    with pytest.raises(InvalidArgument, match="limit"):
        engine.put_meta("big", b"x" * (META_VALUE_BYTES_MAX + 1))
    with pytest.raises(InvalidArgument):
        engine.get_meta("n" * 1000)
    with pytest.raises(InvalidArgument):
        engine.scan("o", "", "", 1_000_000)
    with pytest.raises(InvalidArgument):
        engine.read_log(0, 1_000_000)
    assert engine.get_meta("big") is None


def test_read_connections_of_ended_threads_are_closed(engine: SQLiteEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, LocalWrite("o", "k", b"v"))

    def read() -> None:
        assert engine.get("o", "k") is not None

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert len(engine._readers) == 0
    read()  # this thread's connection stays open until close()
    assert len(engine._readers) == 1
    conn = next(iter(engine._readers))
    engine.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=6)


@settings(max_examples=300, deadline=None, print_blob=True)
@given(prefix=_TEXT, key=_TEXT)
def test_prefix_upper_bound_brackets_exactly_the_keys_with_the_prefix(prefix: str, key: str) -> None:
    upper = prefix_upper_bound(prefix)
    in_range = prefix <= key and (upper is None or key < upper)
    assert in_range == key.startswith(prefix)
    assert upper is None or (upper > prefix and not upper.startswith(prefix))


def test_prefix_upper_bound_edges() -> None:
    assert prefix_upper_bound("") is None
    assert prefix_upper_bound("ab") == "ac"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff\U0010ffff") is None
    assert prefix_upper_bound("a\ud7ff") == "a\ue000"


def test_a_schema_1_store_is_migrated_with_its_subject_index_built(db: Path, stamp: Stamp) -> None:
    first = SQLiteEngine(str(db), NODE, REGION)
    commit_ok(first, stamp, LocalWrite(namespace="c", key="k", value=b"v", subject_id="s-1"))
    first.close()
    with sqlite3.connect(db) as conn:  # what a store written before the index looks like
        conn.execute("DROP TABLE subject_keys")
        conn.execute("PRAGMA user_version = 1")
    again = SQLiteEngine(str(db), NODE, REGION)
    try:
        assert again.subject_keys("s-1") == [("c", "k")]
    finally:
        again.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_a_schema_2_store_moves_its_erasure_block_list_to_a_table(db: Path, stamp: Stamp) -> None:
    first = SQLiteEngine(str(db), NODE, REGION)
    commit_ok(first, stamp, LocalWrite(namespace="c", key="k", value=b"v", subject_id="s-1"))
    first.close()
    blocked = {"digest-a": "req-1", "digest-b": "req-2"}
    with sqlite3.connect(db) as conn:  # what a store of version 2 looks like: the list in one blob
        conn.execute("DROP TABLE erased_subjects")
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('erased_subjects', ?)", (json.dumps(blocked).encode(),)
        )
        conn.execute("PRAGMA user_version = 2")
    again = SQLiteEngine(str(db), NODE, REGION)
    try:
        assert again.blocked_subjects() == blocked
        assert again.get_meta("erased_subjects") is None
        again.block_subject("digest-c", "req-3")
        assert again.blocked_subjects() == {**blocked, "digest-c": "req-3"}
        assert again.get("c", "k") is not None
    finally:
        again.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_a_schema_2_store_with_a_damaged_block_list_is_refused_and_left_as_it_was(db: Path) -> None:
    SQLiteEngine(str(db), NODE, REGION).close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE erased_subjects")
        conn.execute("INSERT INTO meta (name, value) VALUES ('erased_subjects', x'7b7b')")
        conn.execute("PRAGMA user_version = 2")
    with pytest.raises(FailedPrecondition, match="not JSON"):
        SQLiteEngine(str(db), NODE, REGION)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        assert conn.execute("SELECT value FROM meta WHERE name = 'erased_subjects'").fetchone() == (b"{{",)


def overflow_pages(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM dbstat WHERE name = 'kv' AND pagetype = 'overflow'"
        ).fetchone()
    return int(count)


def fill_1k(engine: SQLiteEngine, stamp: Stamp) -> None:
    value = bytes(range(256)) * 4
    for start in range(0, 200, 50):
        commit_ok(engine, stamp, *(LocalWrite("c", f"k{i:05d}", value) for i in range(start, start + 50)))


def test_a_new_store_keeps_a_1_kib_record_in_its_leaf_page(db: Path, stamp: Stamp) -> None:
    """Regression: on 4 KiB pages each such record's state spilled into an overflow page of
    its own, mostly empty (a store six times its raw size)."""
    engine = SQLiteEngine(str(db), NODE, REGION)
    try:
        fill_1k(engine, stamp)
    finally:
        engine.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA page_size").fetchone() == (PAGE_BYTES,)
    assert overflow_pages(db) == 0


def test_the_overflow_check_sees_a_store_of_4_kib_pages(tmp_path: Path, stamp: Stamp) -> None:
    """Negative control of the test above: an existing store keeps its page size, and there
    the same records spill."""
    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("VACUUM")
    engine = SQLiteEngine(str(db), NODE, REGION)
    try:
        fill_1k(engine, stamp)
    finally:
        engine.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA page_size").fetchone() == (4096,)
    assert overflow_pages(db) == 200


def _entry(key: str) -> AuditEntry:
    return AuditEntry(0, 1, 1, REGION, NODE, "alice", "put", "ns", key, "", "allow", "r", "1", "")


def _statements(engine: SQLiteEngine, run: Callable[[], object]) -> list[str]:
    """The statements the write connection runs during run(), in order."""
    seen: list[str] = []
    engine._writer.set_trace_callback(seen.append)
    try:
        run()
    finally:
        engine._writer.set_trace_callback(None)
    return seen


def test_a_lone_write_runs_no_statement_that_changes_nothing(engine: SQLiteEngine, stamp: Stamp) -> None:
    """Every statement step of a commit can hand the GIL to the event loop and back: the
    totals are read in one row, only the counters a commit moved are written, and the audit
    outbox is pruned only when the audit log has settled a later position."""
    engine.audit_settled = lambda: 0
    commit_ok(engine, stamp, LocalWrite("ns", "k0", VALUE, audit=_entry("k0")))

    new_key = _statements(
        engine, lambda: commit_ok(engine, stamp, LocalWrite("ns", "k1", VALUE, audit=_entry("k1")))
    )
    counters = [s for s in new_key if s.startswith("UPDATE counters")]
    assert len(counters) == 2  # records and last_lsn; tombstones did not move
    assert sum(s.startswith("SELECT") and "counters" in s for s in new_key) == 1
    assert not any(s.startswith("DELETE FROM audit_outbox") for s in new_key)

    engine.audit_settled = lambda: 1
    overwrite = _statements(
        engine, lambda: commit_ok(engine, stamp, LocalWrite("ns", "k1", b"new", audit=_entry("k1")))
    )
    assert [s for s in overwrite if s.startswith("UPDATE counters")] == [
        "UPDATE counters SET value = 3 WHERE name = 'last_lsn'"
    ]
    assert sum(s.startswith("DELETE FROM audit_outbox") for s in overwrite) == 1
    assert [lsn for lsn, _ in engine.audit_outbox(0)] == [2, 3]
    assert engine.counts().records == 2
    assert engine.last_lsn() == 3


def test_a_prune_of_the_audit_outbox_that_rolled_back_runs_again(engine: SQLiteEngine, stamp: Stamp) -> None:
    """The outbox prune is skipped only below a position a committed prune reached: a prune
    in a transaction that failed deleted nothing, and the next commit makes it."""
    engine.audit_settled = lambda: 0
    commit_ok(engine, stamp, LocalWrite("ns", "a", VALUE, audit=_entry("a")))
    commit_ok(engine, stamp, LocalWrite("ns", "b", VALUE, audit=_entry("b")))

    def prune_then_fail(tx: WriteTx) -> None:
        tx.carry_audit([], 1)
        raise RuntimeError("the transaction fails after its prune")

    with pytest.raises(RuntimeError):
        engine.backend.write(prune_then_fail)
    assert [lsn for lsn, _ in engine.audit_outbox(0)] == [1, 2]

    engine.audit_settled = lambda: 1
    commit_ok(engine, stamp, LocalWrite("ns", "c", VALUE, audit=_entry("c")))
    assert [lsn for lsn, _ in engine.audit_outbox(0)] == [2, 3]


def test_commits_leave_their_checkpoints_to_the_checkpointer_thread(db: Path, stamp: Stamp) -> None:
    engine = SQLiteEngine(db, NODE, REGION)
    checkpointer = engine.sqlite.checkpointer
    try:
        # Each commit changes at least its key state and its change-log entry.
        for i in range(EVERY_ROWS_DEFAULT):
            commit_ok(engine, stamp, LocalWrite("ns", f"k{i}", VALUE))
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints == 0:
            assert time.monotonic() < deadline, "the checkpointer made no checkpoint"
            time.sleep(0.001)
    finally:
        engine.close()
    assert checkpointer.failures == 0
    assert checkpointer.name not in {thread.name for thread in threading.enumerate()}
    # The engine's write connection closed last: SQLite checkpointed and removed the WAL.
    assert not Path(f"{db}-wal").exists()
