"""The pieces that make a restore fast without making it check less: every backed-up state is
checked (each version's sha256, its shape) and indexed straight from its bytes; the bytes are
stored as they are, merged only where the store already holds the key; objects are prepared
ahead in threads but handed over in order."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from domicile import causality
from domicile.backup.state_check import IndexFields, checked_index_fields
from domicile.causality import CausalContext, Dot, KeyState, Version
from domicile.errors import DataCorruption
from domicile.model import Classification
from domicile.v1 import record_pb2 as pb
from domicile.wire.records import key_state_from_bytes, key_state_to_bytes
from node.backup.prefetch import prepared_in_order
from node.engine.backend import StateRow
from node.engine.core import decode_state
from node.engine.sqlite import SQLiteEngine


def version(node: str, counter: int, value: bytes, *, subject: str = "", tombstone: bool = False) -> Version:
    return Version(
        dot=Dot(node, counter),
        value=value,
        hlc=counter << 16,
        tombstone=tombstone,
        subject_id=subject,
        classification=Classification.PERSONAL if subject else Classification.INTERNAL,
        checksum=causality.sha256(value),
    )


def state_bytes(*versions: Version) -> bytes:
    return key_state_to_bytes(KeyState(versions, CausalContext.of(dots=[v.dot for v in versions])))


def row(namespace: str, key: str, blob: bytes) -> StateRow:
    fields = checked_index_fields(namespace, key, blob)
    return StateRow(namespace, key, blob, fields.live, fields.subjects, fields.classifications)


def test_index_fields_come_from_the_bytes_as_the_engine_derives_them() -> None:
    blob = state_bytes(
        version("a", 1, b"v", subject="s-2"), version("b", 1, b"", subject="s-1", tombstone=True)
    )
    assert checked_index_fields("ns", "k", blob) == IndexFields(
        True, ("s-1", "s-2"), (int(Classification.PERSONAL),)
    )
    dead = state_bytes(version("a", 2, b"", tombstone=True))
    assert checked_index_fields("ns", "k", dead) == IndexFields(False, (), (int(Classification.INTERNAL),))


def test_a_damaged_state_is_refused_by_name() -> None:
    good = version("a", 1, b"value")
    # The object around it may match its sha256; the value inside must match its own.
    with pytest.raises(DataCorruption, match=r"ns/k1 .*failed its sha256"):
        checked_index_fields("ns", "k1", state_bytes(dataclasses.replace(good, value=b"other")))
    with pytest.raises(DataCorruption, match="ns/k2 cannot be decoded"):
        checked_index_fields("ns", "k2", b"\xff\xff\xff")
    msg = pb.KeyState.FromString(state_bytes(good))
    msg.versions[0].classification = 77  # type: ignore[assignment]
    with pytest.raises(DataCorruption, match="ns/k3 has an unknown classification 77"):
        checked_index_fields("ns", "k3", msg.SerializeToString())
    msg = pb.KeyState.FromString(state_bytes(good))
    msg.context.version_vector["a"] = 1 << 62
    with pytest.raises(DataCorruption, match="ns/k4 has a malformed causal context"):
        checked_index_fields("ns", "k4", msg.SerializeToString())
    assert checked_index_fields("ns", "k5", state_bytes(good)).live


def malformed_states() -> dict[str, bytes]:
    """A state of each shape the store refuses to read, and the good one they are made from."""
    good = version("a", 1, b"value")
    shapes: dict[str, bytes] = {"good": state_bytes(good)}
    shapes["bad checksum"] = state_bytes(dataclasses.replace(good, value=b"other"))
    shapes["not a state"] = b"\xff\xff\xff"
    edits: dict[str, Callable[[pb.KeyState], object]] = {
        "unknown classification": lambda m: setattr(m.versions[0], "classification", 77),
        "empty vector node": lambda m: m.context.version_vector.__setitem__("", 1),
        "vector node of 64 characters": lambda m: m.context.version_vector.__setitem__("n" * 64, 1),
        "vector counter 0": lambda m: m.context.version_vector.__setitem__("b", 0),
        "vector counter 2^62": lambda m: m.context.version_vector.__setitem__("b", 1 << 62),
        "dot without node": lambda m: m.context.dots.add(counter=5),
        "dot counter 0": lambda m: m.context.dots.add(node_id="b", counter=0),
    }
    for name, edit in edits.items():
        msg = pb.KeyState.FromString(state_bytes(good))
        edit(msg)
        shapes[name] = msg.SerializeToString()
    msg = pb.KeyState.FromString(state_bytes(good))
    msg.context.version_vector["n" * 63] = 1
    shapes["vector node of 63 characters"] = msg.SerializeToString()
    return shapes


def test_the_restore_check_refuses_exactly_what_the_store_refuses_to_read() -> None:
    """A state the check lets in is stored as it is: one the store then refuses to decode would
    fail every later read of its key, where the restore should have stopped at it."""
    verdicts = {}
    for name, blob in malformed_states().items():
        try:
            decode_state("ns", name, blob)
            by_store = "read"
        except DataCorruption:
            by_store = "refused"
        try:
            checked_index_fields("ns", name, blob)
            by_check = "read"
        except DataCorruption:
            by_check = "refused"
        verdicts[name] = (by_store, by_check)
    # Negative control: the store does refuse a 64-character node id, and reads the others.
    assert verdicts["vector node of 64 characters"][0] == "refused"
    assert verdicts["good"] == verdicts["vector node of 63 characters"] == ("read", "read")
    assert {name for name, (store, check) in verdicts.items() if store != check} == set()


def test_restored_bytes_are_stored_as_they_are_and_merged_where_the_store_holds_the_key(
    tmp_path: Path,
) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", "eu-west-1.5", "eu-west-1")
    try:
        held = state_bytes(version("eu-west-1", 1, b"held"))
        assert engine.restore_checked_states([row("ns", "shared", held)]) == 1
        fresh = state_bytes(version("eu-west-1", 2, b"fresh", subject="s-1"))
        backed_up = state_bytes(version("eu-central-1", 1, b"backed up"))
        rows = [row("ns", "fresh", fresh), row("ns", "shared", backed_up)]
        assert engine.restore_checked_states(rows) == 2
        assert engine.backend.load_states("ns", ["fresh"]) == {"fresh": fresh}
        merged = engine.get("ns", "shared")
        assert merged is not None
        assert merged == causality.merge(key_state_from_bytes(held), key_state_from_bytes(backed_up))
        assert {v.value for v in merged.versions} == {b"held", b"backed up"}
        assert engine.subject_keys("s-1") == [("ns", "fresh")]
        assert engine.counts().records == 2
        # Idempotent, as a restore begun again must be.
        assert engine.restore_checked_states(rows) == 0
        assert engine.counts().records == 2
        # A key repeated within one call is merged too, never overwritten.
        again = [row("ns", "twice", fresh), row("ns", "twice", backed_up)]
        assert engine.restore_checked_states(again) == 1
        twice = engine.get("ns", "twice")
        assert twice is not None and {v.value for v in twice.versions} == {b"fresh", b"backed up"}
        assert engine.counts().records == 3
    finally:
        engine.close()


def test_prepared_items_come_back_in_order_whatever_finishes_first() -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    delays = [rng.random() * 0.01 for _ in range(40)]
    threads: set[str] = set()

    def prepare(i: int) -> int:
        threads.add(threading.current_thread().name)
        time.sleep(delays[i])
        return i * i

    assert list(prepared_in_order(prepare, range(40))) == [(i, i * i) for i in range(40)]
    assert all(name.startswith("restore-prefetch") for name in threads)


def test_a_failure_is_raised_at_its_item_and_closing_early_stops_the_rest() -> None:
    started: list[int] = []

    def prepare(i: int) -> int:
        started.append(i)
        if i == 3:
            raise DataCorruption("object 3 is damaged")
        return i

    seen = []
    with pytest.raises(DataCorruption, match="object 3"):
        for i, _ in prepared_in_order(prepare, range(100), ahead=2):
            seen.append(i)
    assert seen == [0, 1, 2]
    # Bounded read-ahead: nothing far past the failure was even started.
    assert max(started) <= 5

    started.clear()
    items = prepared_in_order(prepare, range(100), ahead=2)
    assert next(items) == (0, 0)
    items.close()
    assert max(started) <= 2
