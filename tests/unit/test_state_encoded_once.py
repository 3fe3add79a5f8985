"""A write's version is encoded once, for its change-log entry, and copied into its key's stored
state and into the write's answer: the bytes must be exactly those of encoding afresh."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.causality import CausalContext, Dot, KeyState, Version
from domicile.hlc import HybridClock
from domicile.model import Classification
from domicile.v1 import record_pb2 as pb
from domicile.wire.records import key_state_to_bytes, version_to_pb
from node.api.storage import answer_version
from node.engine.base import Committed, LocalWrite
from node.engine.sqlite import SQLiteEngine


def version(counter: int, value: bytes) -> Version:
    return Version(
        dot=Dot("n1", counter),
        value=value,
        hlc=1_000 + counter,
        subject_id="subject-1",
        classification=Classification.PERSONAL,
        checksum=b"c" * 32,
        origin_region="eu",
    )


def test_a_known_version_is_copied_into_the_same_bytes() -> None:
    older, newer = version(1, b"old"), version(2, b"new")
    state = KeyState((older, newer), CausalContext.of({"n1": 2}, []), ())
    assert key_state_to_bytes(state, (newer, version_to_pb(newer))) == key_state_to_bytes(state)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["n1", "n2", "a-long-node-id"]), st.integers(0, 2**40)),
    st.frozensets(st.builds(Dot, st.sampled_from(["n1", "n3"]), st.integers(1, 2**20)), max_size=3),
    st.sampled_from([0, 1, 127, 128, 16_383, 16_384, 70_000]),
    st.booleans(),
)
def test_a_state_of_one_known_version_has_the_bytes_of_encoding_afresh(
    vv: dict[str, int], dots: frozenset[Dot], value_bytes: int, tombstone: bool
) -> None:
    # Put together from its fields' encodings (lengths of one to three varint bytes, an empty
    # context left out): the bytes protobuf's own encoding gives.
    written = dataclasses.replace(version(3, b"v" * value_bytes), tombstone=tombstone)
    for context in (CausalContext.of(vv, dots), CausalContext.of(vv, dots), CausalContext.empty()):
        state = KeyState((written,), context, ())
        assert key_state_to_bytes(state, (written, version_to_pb(written))) == key_state_to_bytes(state)
    shared = CausalContext.of({"n1": 1})
    for context in (shared, CausalContext.of(vv, dots), shared):  # the last context, remembered
        state = KeyState((written,), context, ())
        assert key_state_to_bytes(state, (written, version_to_pb(written))) == key_state_to_bytes(state)


def test_a_known_form_is_used_only_for_that_very_version() -> None:
    # An equal but distinct version object is encoded from itself, not from the known form
    # (which here deliberately differs, to show which one was used).
    stored, other = version(1, b"stored"), version(1, b"stored")
    state = KeyState((stored,), CausalContext.of({"n1": 1}, []), ())
    assert key_state_to_bytes(state, (other, version_to_pb(version(9, b"x")))) == key_state_to_bytes(state)
    assert key_state_to_bytes(state, (stored, version_to_pb(version(9, b"x")))) != key_state_to_bytes(state)


def test_a_batch_that_writes_a_key_twice_stores_the_state_of_both_writes(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", "n1", "eu")
    try:
        first, second = engine.commit_local(
            [
                LocalWrite("ns", "k", b"one", supersedes=CausalContext.empty()),
                LocalWrite("ns", "k", b"two", supersedes=CausalContext.empty()),
                LocalWrite("ns", "fresh", b"three"),
            ],
            HybridClock().now,
        )[:2]
        assert isinstance(first, Committed) and isinstance(second, Committed)
        stored = engine.get("ns", "k")
        assert stored == second.state
        assert [v.value for v in stored.versions] == [b"one", b"two"]  # concurrent siblings
        fresh = engine.get("ns", "fresh")
        assert fresh is not None and [v.value for v in fresh.versions] == [b"three"]
    finally:
        engine.close()


def test_an_answer_copies_the_encoded_version_only_when_it_answers_that_version(tmp_path: Path) -> None:
    engine = SQLiteEngine(tmp_path / "store.sqlite3", "n1", "eu")
    try:
        (committed,) = engine.commit_local([LocalWrite("ns", "k", b"stored")], HybridClock().now)
        assert isinstance(committed, Committed) and committed.encoded is not None
        assert committed.encoded[0] is committed.mutation.version
        out = pb.RecordVersion()
        answer_version(committed, out)
        assert out == version_to_pb(committed.mutation.version)
        # An answer with another version (a sealed record is answered with the value the
        # client wrote) must not take the stored one's encoded form.
        plain = dataclasses.replace(committed.mutation.version, value=b"as written")
        answered = dataclasses.replace(
            committed, mutation=dataclasses.replace(committed.mutation, version=plain)
        )
        out = pb.RecordVersion()
        answer_version(answered, out)
        assert out.value == b"as written" and out == version_to_pb(plain)
    finally:
        engine.close()
