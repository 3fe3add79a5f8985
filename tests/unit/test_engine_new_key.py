"""The engine builds the state of a key it never held without causality.apply (a bulk load's
common case): that state must be exactly the one the general path makes, the state apply()
gives for the write's mutation, with the request mark holding the write's position."""

from __future__ import annotations

from pathlib import Path

import pytest

from domicile import causality
from domicile.causality import CausalContext, Dot, KeyState
from domicile.errors import FailedPrecondition
from domicile.hlc import HybridClock
from domicile.model import Classification
from node.engine.base import Committed, LocalWrite
from node.engine.sqlite import SQLiteEngine

NODE = "n1"

WRITES = {
    "plain": LocalWrite("ns", "a", b"v"),
    "with a request id": LocalWrite("ns", "b", b"v", request_id="req-1"),
    "a tombstone": LocalWrite("ns", "c", tombstone=True, request_id="req-2"),
    "superseding another node's versions": LocalWrite(
        "ns",
        "d",
        b"v",
        supersedes=CausalContext.of({"n2": 3}, [Dot("n3", 5)]),
        subject_id="subject-1",
        classification=Classification.PERSONAL,
        request_id="req-3",
    ),
    "under a sibling cap": LocalWrite("ns", "e", b"v", siblings_max=1),
}


def expected_state(committed: Committed) -> KeyState:
    """What the general path makes: apply() to no state, then the marks given the position."""
    state = causality.apply(None, committed.mutation).state
    marks = tuple(
        causality.RequestMark(m.request_id, m.dots, m.hlc, committed.mutation.lsn, False)
        for m in state.requests
    )
    return KeyState(state.versions, state.context, marks)


@pytest.mark.parametrize("name", sorted(WRITES))
def test_a_new_keys_state_is_the_one_apply_makes(tmp_path: Path, name: str) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, "eu")
    try:
        (result,) = engine.commit_local([WRITES[name]], HybridClock().now)
        assert isinstance(result, Committed)
        assert not result.had_live and not result.conflict and not result.replayed
        assert result.state == expected_state(result)
        assert engine.get("ns", WRITES[name].key) == result.state
    finally:
        engine.close()


def test_a_retry_of_a_new_keys_write_is_answered_from_its_mark(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, "eu")
    try:
        write = WRITES["with a request id"]
        (first,) = engine.commit_local([write], HybridClock().now)
        (again,) = engine.commit_local([write], HybridClock().now)
        assert isinstance(first, Committed) and isinstance(again, Committed)
        assert again.replayed and again.mutation.lsn == first.mutation.lsn
        replayed, made = again.mutation.version, first.mutation.version
        assert (replayed.dot, replayed.hlc, replayed.value) == (made.dot, made.hlc, made.value)
    finally:
        engine.close()


def test_a_negative_sibling_cap_still_refuses_the_first_version(tmp_path: Path) -> None:
    # Negative control of the comparison above: a write the general path refuses is refused.
    engine = SQLiteEngine(tmp_path / "store.sqlite3", NODE, "eu")
    try:
        (result,) = engine.commit_local([LocalWrite("ns", "f", b"v", siblings_max=-1)], HybridClock().now)
        assert isinstance(result, FailedPrecondition)
        assert engine.get("ns", "f") is None
    finally:
        engine.close()
