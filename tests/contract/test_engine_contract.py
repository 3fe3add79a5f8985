"""The StorageEngine contract: every engine passes every test here (see conftest.HARNESSES)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from domicile import causality
from domicile.causality import CausalContext, Dot, KeyState, Mutation
from domicile.errors import DataCorruption, DomicileError, FailedPrecondition, InvalidArgument, Unavailable
from domicile.model import Classification
from domicile.wire.errors import status_for
from domicile.wire.records import key_state_from_bytes
from node.engine.base import GET_MANY_KEYS_MAX, Committed, LocalWrite, StorageEngine, StoreCounts

from .harness import NODE, REGION, EngineHarness, commit_ok

Stamp = Callable[[], int]


def put(namespace: str, key: str, value: bytes, supersedes: CausalContext | None = None) -> LocalWrite:
    return LocalWrite(namespace=namespace, key=key, value=value, supersedes=supersedes)


def delete(namespace: str, key: str, supersedes: CausalContext | None = None) -> LocalWrite:
    return LocalWrite(namespace=namespace, key=key, tombstone=True, supersedes=supersedes)


def values(state: KeyState | None) -> list[bytes]:
    return sorted(v.value for v in state.live()) if state else []


# -- local writes and reads ------------------------------------------------------------------


def test_write_then_get_round_trips_every_field(engine: StorageEngine, stamp: Stamp) -> None:
    write = LocalWrite(
        namespace="customers",
        key="c-1",
        value=b"\x00binary\xffvalue",
        content_type="application/json",
        subject_id="subject-17",
        subject_jurisdiction="DE",
        classification=Classification.PERSONAL,
    )
    (committed,) = commit_ok(engine, stamp, write)
    version = committed.mutation.version
    assert version.dot == Dot(NODE, 1)
    assert version.value == write.value
    assert version.content_type == "application/json"
    assert version.subject_id == "subject-17"
    assert version.subject_jurisdiction == "DE"
    assert version.classification is Classification.PERSONAL
    assert version.origin_region == REGION
    assert version.checksum == causality.sha256(write.value)
    assert not version.tombstone
    assert version.hlc > 0
    assert committed.mutation.lsn == 1
    assert committed.mutation.origin_node_id == NODE
    assert committed.mutation.namespace == "customers" and committed.mutation.key == "c-1"
    assert not committed.had_live and not committed.conflict
    stored = engine.get("customers", "c-1")
    assert stored == committed.state
    assert stored is not None and stored.versions == (version,)
    assert stored.context == CausalContext.of({NODE: 1})


def test_get_of_unwritten_key_or_namespace_is_none(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, put("orders", "a", b"1"))
    assert engine.get("orders", "b") is None
    assert engine.get("other", "a") is None


def test_get_many_answers_like_get_for_every_key_written(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, put("o", "a", b"1"), put("o", "b", b"2"), put("p", "a", b"3"), delete("o", "b"))
    got = engine.get_many("o", ["b", "a", "never", "a"])
    assert got == {"a": engine.get("o", "a"), "b": engine.get("o", "b")}
    assert values(got["b"]) == []  # a tombstoned key is still answered
    assert engine.get_many("o", []) == {}
    assert engine.get_many("other", ["a"]) == {}


def test_get_many_stored_holds_the_states_get_many_answers(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, put("o", "a", b"1"), put("o", "b", b"2"), delete("o", "b"), put("p", "a", b"3"))
    stored = engine.get_many_stored("o", ["b", "a", "never", "a"])
    decoded = {key: key_state_from_bytes(blob) for key, blob in stored.items()}
    assert decoded == engine.get_many("o", ["a", "b"])
    with pytest.raises(InvalidArgument):
        engine.get_many_stored("o", [f"k{i}" for i in range(GET_MANY_KEYS_MAX + 1)])


def test_get_many_reads_more_keys_than_one_query_holds(engine: StorageEngine, stamp: Stamp) -> None:
    keys = [f"k{i:05d}" for i in range(1_200)]
    for i in range(0, len(keys), 400):
        commit_ok(engine, stamp, *(put("o", k, k.encode()) for k in keys[i : i + 400]))
    got = engine.get_many("o", [*keys, "missing"])
    assert sorted(got) == keys
    assert all(values(got[k]) == [k.encode()] for k in keys)


def test_get_many_refuses_too_many_keys_and_bad_text(engine: StorageEngine) -> None:
    with pytest.raises(InvalidArgument):
        engine.get_many("o", [f"k{i}" for i in range(GET_MANY_KEYS_MAX + 1)])
    with pytest.raises(InvalidArgument):
        engine.get_many("o", ["bad\ud800"])


def test_hlc_comes_from_stamp_in_write_order(engine: StorageEngine) -> None:
    stamps = iter([100, 200, 300])
    results = commit_ok(
        engine, lambda: next(stamps), put("o", "a", b"1"), put("o", "b", b"2"), put("o", "a", b"3")
    )
    assert [c.mutation.version.hlc for c in results] == [100, 200, 300]


def test_namespaces_lists_every_namespace_with_a_key_tombstones_included(
    engine: StorageEngine, stamp: Stamp
) -> None:
    assert engine.namespaces() == []
    commit_ok(engine, stamp, put("b", "k", b"1"), put("a", "k", b"1"), put("a", "j", b"1"))
    commit_ok(engine, stamp, delete("c", "gone"))
    assert engine.namespaces() == ["a", "b", "c"]


def test_subject_keys_index_local_and_remote_writes_and_keeps_tombstoned_keys(
    engine: StorageEngine, stamp: Stamp
) -> None:
    commit_ok(
        engine,
        stamp,
        LocalWrite(namespace="c", key="k1", value=b"1", subject_id="s-1"),
        LocalWrite(namespace="a", key="k2", value=b"2", subject_id="s-1"),
        LocalWrite(namespace="c", key="k3", value=b"3", subject_id="s-2"),
    )
    commit_ok(engine, stamp, LocalWrite(namespace="c", key="k1", tombstone=True, subject_id="s-1"))
    remote = causality.Version(
        Dot("other", 1), b"r", 1 << 16, subject_id="s-1", checksum=causality.sha256(b"r")
    )
    mutation = Mutation("b", "k4", CausalContext.empty(), remote, lsn=1, origin_node_id="other")
    engine.apply_remote("other", [mutation], 1)
    assert engine.subject_keys("s-1") == [("a", "k2"), ("b", "k4"), ("c", "k1")]
    assert engine.subject_keys("s-2") == [("c", "k3")]
    assert engine.subject_keys("nobody") == []


def test_overwrite_without_context_supersedes_everything_held(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, put("o", "k", b"1"))
    (second,) = commit_ok(engine, stamp, put("o", "k", b"2"))
    assert second.had_live and not second.conflict
    assert second.mutation.version.dot == Dot(NODE, 2)
    assert second.mutation.context == CausalContext.of({NODE: 1})
    assert values(engine.get("o", "k")) == [b"2"]


def test_concurrent_contexts_leave_siblings(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, put("o", "k", b"first"))
    # A writer that saw nothing (empty context) is concurrent with the first write.
    (blind,) = commit_ok(engine, stamp, put("o", "k", b"second", supersedes=CausalContext.empty()))
    assert blind.conflict
    state = engine.get("o", "k")
    assert values(state) == [b"first", b"second"]
    assert state is not None and state.context == CausalContext.of({NODE: 2})
    # A write carrying the context of that read supersedes both siblings.
    (merged,) = commit_ok(engine, stamp, put("o", "k", b"merged", supersedes=state.context))
    assert not merged.conflict
    assert values(engine.get("o", "k")) == [b"merged"]


def test_context_supersedes_only_what_it_covers(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, put("o", "k", b"a"))
    seen_a = engine.get("o", "k")
    assert seen_a is not None
    commit_ok(engine, stamp, put("o", "k", b"b", supersedes=CausalContext.empty()))
    # This writer saw a but not b: a goes, b stays as a sibling of c.
    (c,) = commit_ok(engine, stamp, put("o", "k", b"c", supersedes=seen_a.context))
    assert c.conflict
    assert values(engine.get("o", "k")) == [b"b", b"c"]


def test_context_beyond_the_counters_this_node_issued_is_refused(engine: StorageEngine, stamp: Stamp) -> None:
    # A context naming this node's counters past what it issued for the key is forged (it would
    # push the key's dots toward the counter limit): refused, and nothing is written.
    (first,) = commit_ok(engine, stamp, put("o", "k", b"x"))
    ahead = CausalContext.of({NODE: 5})
    (refused,) = engine.commit_local([put("o", "k", b"y", supersedes=ahead)], stamp)
    assert isinstance(refused, InvalidArgument)
    assert "issued only up to 1" in refused.message
    assert engine.get("o", "k") == first.state
    assert engine.last_lsn() == first.mutation.lsn
    # What this node issued, and other nodes' counters (it may not have seen them yet), pass.
    (ok,) = commit_ok(engine, stamp, put("o", "k", b"z", supersedes=CausalContext.of({NODE: 1, "other": 9})))
    assert ok.mutation.version.dot == Dot(NODE, 2)


def test_writes_in_one_batch_see_each_other(engine: StorageEngine, stamp: Stamp) -> None:
    results = commit_ok(engine, stamp, put("o", "k", b"1"), put("o", "k", b"2"), put("o", "k", b"3"))
    assert [c.mutation.version.dot.counter for c in results] == [1, 2, 3]
    assert [c.had_live for c in results] == [False, True, True]
    assert values(engine.get("o", "k")) == [b"3"]
    assert engine.get("o", "k") == results[-1].state
    blind = CausalContext.empty()
    commit_ok(engine, stamp, *(put("o", "s", bytes([i]), supersedes=blind) for i in range(3)))
    assert len(values(engine.get("o", "s"))) == 3
    assert engine.counts() == StoreCounts(records=2, tombstones=0)


def test_delete_leaves_a_tombstone_and_reports_had_live(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, put("o", "k", b"v"))
    (deleted,) = commit_ok(engine, stamp, delete("o", "k"))
    assert deleted.had_live and not deleted.conflict
    assert deleted.mutation.version.tombstone
    assert deleted.mutation.version.value == b""
    assert deleted.mutation.version.checksum == causality.sha256(b"")
    state = engine.get("o", "k")
    assert state is not None and not state.has_live()
    assert len(state.versions) == 1 and state.versions[0].tombstone
    assert engine.counts() == StoreCounts(records=0, tombstones=1)
    (again,) = commit_ok(engine, stamp, delete("o", "k"))
    assert not again.had_live
    (never,) = commit_ok(engine, stamp, delete("o", "never-written"))
    assert not never.had_live
    assert engine.counts() == StoreCounts(records=0, tombstones=2)


def test_delete_with_a_partial_context_keeps_the_unseen_sibling(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, put("o", "k", b"a"))
    seen_a = engine.get("o", "k")
    assert seen_a is not None
    commit_ok(engine, stamp, put("o", "k", b"b", supersedes=CausalContext.empty()))
    (deleted,) = commit_ok(engine, stamp, delete("o", "k", supersedes=seen_a.context))
    assert deleted.had_live and deleted.conflict
    assert values(engine.get("o", "k")) == [b"b"]
    assert engine.counts() == StoreCounts(records=1, tombstones=0)


def test_counts_follow_keys_between_live_and_deleted(engine: StorageEngine, stamp: Stamp) -> None:
    assert engine.counts() == StoreCounts(records=0, tombstones=0)
    commit_ok(engine, stamp, put("o", "a", b"1"), put("o", "b", b"1"), put("p", "a", b"1"))
    commit_ok(engine, stamp, put("o", "a", b"2"))
    assert engine.counts() == StoreCounts(records=3, tombstones=0)
    commit_ok(engine, stamp, delete("o", "a"), delete("o", "b"))
    assert engine.counts() == StoreCounts(records=1, tombstones=2)
    commit_ok(engine, stamp, put("o", "a", b"back"))
    assert engine.counts() == StoreCounts(records=2, tombstones=1)


# -- change log ------------------------------------------------------------------------------


def test_lsns_are_monotonic_and_gapless_and_the_log_holds_the_mutations(
    engine: StorageEngine, stamp: Stamp
) -> None:
    assert engine.last_lsn() == 0
    assert engine.read_log(0, 10) == []
    committed: list[Committed] = []
    for batch in range(4):
        writes = [
            put("o", f"k{batch}", b"v"),
            LocalWrite(namespace="Not A Namespace", key="x"),  # refused: takes no position
            put("o", "shared", bytes([batch])),
            delete("o", f"k{batch}"),
        ]
        results = engine.commit_local(writes, stamp)
        assert isinstance(results[1], InvalidArgument)
        committed += [r for r in results if isinstance(r, Committed)]
    lsns = [c.mutation.lsn for c in committed]
    assert lsns == list(range(1, len(committed) + 1))
    assert engine.last_lsn() == len(committed)
    assert engine.read_log(0, 1000) == [c.mutation for c in committed]


def test_read_log_pages_in_lsn_order(engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, *(put("o", f"k{i:02}", b"v") for i in range(25)))
    everything = engine.read_log(0, 100)
    assert [m.lsn for m in everything] == list(range(1, 26))
    pages: list[Mutation] = []
    position = 0
    while page := engine.read_log(position, 7):
        assert len(page) <= 7
        pages += page
        position = page[-1].lsn
    assert pages == everything
    assert [m.lsn for m in engine.read_log(20, 100)] == [21, 22, 23, 24, 25]
    assert engine.read_log(25, 10) == []
    assert engine.read_log(1000, 10) == []


@pytest.mark.parametrize(("after_lsn", "limit"), [(-1, 10), (0, 0), (0, -5)])
def test_read_log_refuses_bad_arguments(engine: StorageEngine, after_lsn: int, limit: int) -> None:
    with pytest.raises(InvalidArgument):
        engine.read_log(after_lsn, limit)


# -- scan ------------------------------------------------------------------------------------


def _scan_all(engine: StorageEngine, namespace: str, prefix: str, page: int) -> list[str]:
    keys: list[str] = []
    after = ""
    while batch := engine.scan(namespace, prefix, after, page):
        assert len(batch) <= page
        keys += [k for k, _ in batch]
        after = batch[-1][0]
    return keys


def test_scan_orders_filters_and_pages(engine: StorageEngine, stamp: Stamp) -> None:
    keys = [
        "a",
        "ab",
        "abc",
        "abd",
        "ac",
        "b",
        "b\x7f",
        "é",
        "\uffff",
        "\U0001f600",
        "a\U0010ffff",
        "a\U0010ffffz",
    ]
    commit_ok(engine, stamp, *(put("o", k, k.encode()) for k in keys))
    commit_ok(engine, stamp, put("other", "ab", b"not this namespace"))
    commit_ok(engine, stamp, put("o", "abz", b"x"), delete("o", "abz"))
    result = engine.scan("o", "", "", 100)
    assert [k for k, _ in result] == sorted(keys)
    assert all(values(state) == [k.encode()] for k, state in result)
    assert _scan_all(engine, "o", "", 2) == sorted(keys)
    assert _scan_all(engine, "o", "ab", 1) == ["ab", "abc", "abd"]
    assert _scan_all(engine, "o", "a\U0010ffff", 1) == ["a\U0010ffff", "a\U0010ffffz"]
    assert [k for k, _ in engine.scan("o", "a", "ab", 10)] == [
        "abc",
        "abd",
        "ac",
        "a\U0010ffff",
        "a\U0010ffffz",
    ]
    # start_after before the prefix starts at the prefix; after it, nothing is left.
    assert [k for k, _ in engine.scan("o", "b", "a", 10)] == ["b", "b\x7f"]
    assert engine.scan("o", "a", "b", 10) == []
    assert engine.scan("o", "zz", "", 10) == []
    assert engine.scan("missing", "", "", 10) == []


def test_scan_matches_a_sorted_model_with_random_keys(
    engine: StorageEngine, stamp: Stamp, rng: random.Random
) -> None:
    alphabet = ["a", "b", "é", "\u4e2d", "\U0001f600", "\uffff", "0", "-"]
    model: dict[str, bool] = {}
    for _ in range(200):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
        live = rng.random() < 0.8
        commit_ok(engine, stamp, put("o", key, b"v") if live else delete("o", key))
        model[key] = live
    live_keys = sorted(k for k, v in model.items() if v)
    for _ in range(20):
        prefix = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 2)))
        expected = [k for k in live_keys if k.startswith(prefix)]
        assert _scan_all(engine, "o", prefix, rng.randint(1, 5)) == expected, prefix
    assert engine.counts() == StoreCounts(records=len(live_keys), tombstones=len(model) - len(live_keys))


@pytest.mark.parametrize("limit", [0, -1])
def test_scan_refuses_a_bad_limit(engine: StorageEngine, limit: int) -> None:
    with pytest.raises(InvalidArgument):
        engine.scan("o", "", "", limit)


# -- failures within a batch -----------------------------------------------------------------


def test_a_refused_write_changes_nothing_and_the_rest_of_the_batch_commits(
    engine: StorageEngine, stamp: Stamp
) -> None:
    commit_ok(engine, stamp, put("o", "before", b"0"))
    writes = [
        put("o", "k", b"1"),
        LocalWrite(namespace="o", key="k", value=b"a tombstone with a value", tombstone=True),
        put("Bad-Namespace", "k", b"x"),
        put("o", "", b"empty key"),
        put("o", "k", b"2"),
        LocalWrite(namespace="o", key="untouched", value=b"x", tombstone=True),
        put("o", "other", b"3"),
    ]
    results = engine.commit_local(writes, stamp)
    assert len(results) == len(writes)
    for i in (1, 2, 3, 5):
        assert isinstance(results[i], InvalidArgument), results[i]
        assert str(results[i])
    ok = [r for r in results if isinstance(r, Committed)]
    assert [c.mutation.lsn for c in ok] == [2, 3, 4]
    # The refused write between the two writes of k took no dot.
    assert [c.mutation.version.dot.counter for c in ok[:2]] == [1, 2]
    assert values(engine.get("o", "k")) == [b"2"]
    assert engine.get("o", "untouched") is None
    assert engine.get("Bad-Namespace", "k") is None
    assert engine.last_lsn() == 4
    assert [m.lsn for m in engine.read_log(0, 100)] == [1, 2, 3, 4]
    assert engine.counts() == StoreCounts(records=3, tombstones=0)


def test_an_all_refused_batch_and_an_empty_batch_change_nothing(engine: StorageEngine, stamp: Stamp) -> None:
    assert engine.commit_local([], stamp) == []
    results = engine.commit_local([put("BAD", "k", b"x"), delete("o", "")], stamp)
    assert all(isinstance(r, DomicileError) for r in results)
    assert engine.last_lsn() == 0
    assert engine.counts() == StoreCounts(records=0, tombstones=0)


MIB = 1 << 20


def sibling(key: str, fill: int, size: int) -> LocalWrite:
    """A write that supersedes nothing: its version stands beside every one the key holds."""
    return LocalWrite(namespace="o", key=key, value=bytes([fill]) * size, supersedes=CausalContext.empty())


def test_regression_a_key_state_too_large_refuses_only_the_write_that_makes_it(
    harness: EngineHarness, stamp: Stamp
) -> None:
    """Writes of one key in one commit are judged as if committed one after another: one whose
    state would be past what the store can hold (MongoDB's 16 MiB document) is refused, and the
    others of its key, before and after it, are made. Every write of the key was refused, those
    that fitted too. An engine without such a limit makes them all."""
    siblings = [sibling("k", i, MIB) for i in range(14)]  # 14 MiB, in one commit
    writes = [
        sibling("k", 20, MIB),  # 15 MiB: fits
        sibling("k", 21, MIB),  # 16 MiB and the rest of the state: past the limit
        put("o", "other", b"fine"),
        sibling("k", 22, MIB // 2),  # 15.5 MiB: fits
        sibling("k", 23, MIB),  # 16.5 MiB: past it
        sibling("k", 24, 1024),  # a small one still fits
    ]
    alone = harness.open("alone")
    commit_ok(alone, stamp, *siblings)
    expected = [alone.commit_local([write], stamp)[0] for write in writes]
    grouped = harness.open("grouped")
    commit_ok(grouped, stamp, *siblings)
    results = grouped.commit_local(writes, stamp)

    def outcome(result: Committed | DomicileError) -> object:
        if isinstance(result, Committed):
            version = result.mutation.version
            return result.mutation.lsn, version.dot, version.value[:1], len(version.value)
        return type(result), status_for(result)

    assert [outcome(r) for r in results] == [outcome(e) for e in expected]
    for result in results:
        if isinstance(result, DomicileError):
            assert result.message.startswith("o/k would hold a key state of"), result.message
            assert "16 MiB" in result.message, result.message
    # The refused writes took no position and no dot: the log holds the others, numbered on.
    made = [r for r in results if isinstance(r, Committed)]
    logged = grouped.read_log(len(siblings), 100)
    assert [(m.lsn, m.key, m.version.dot) for m in logged] == [
        (c.mutation.lsn, c.mutation.key, c.mutation.version.dot) for c in made
    ]
    assert [m.lsn for m in logged] == list(range(len(siblings) + 1, len(siblings) + len(made) + 1))
    assert grouped.last_lsn() == len(siblings) + len(made)
    for key in ("k", "other"):
        state, want = grouped.get("o", key), alone.get("o", key)
        assert state is not None and want is not None
        assert sorted((v.dot, len(v.value)) for v in state.versions) == sorted(
            (v.dot, len(v.value)) for v in want.versions
        )
    assert grouped.counts() == alone.counts()
    # The next write of the key takes the dot after the last one made.
    state = grouped.get("o", "k")
    assert state is not None
    (after,) = commit_ok(grouped, stamp, put("o", "k", b"resolved", supersedes=state.context))
    assert after.mutation.version.dot.counter == max(v.dot.counter for v in state.versions) + 1


def test_lone_surrogate_keys_are_refused(engine: StorageEngine, stamp: Stamp) -> None:
    (result,) = engine.commit_local([put("o", "bad\ud800", b"x")], stamp)
    assert isinstance(result, InvalidArgument)
    with pytest.raises(InvalidArgument):
        engine.get("o", "bad\ud800")
    with pytest.raises(InvalidArgument):
        engine.scan("o", "\ud800", "", 10)


# -- remote apply ----------------------------------------------------------------------------


def _remote_log(
    harness: EngineHarness, stamp: Stamp, *writes: LocalWrite
) -> tuple[StorageEngine, list[Mutation]]:
    remote = harness.open("remote", node_id="node-b", region="eu-central-1")
    commit_ok(remote, stamp, *writes)
    return remote, remote.read_log(0, 1000)


def test_apply_remote_stores_states_without_logging_them(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    remote, log = _remote_log(harness, stamp, put("o", "a", b"1"), put("o", "b", b"2"), delete("o", "b"))
    outcome = engine.apply_remote("node-b", log, log[-1].lsn)
    assert outcome.applied == tuple(log)
    assert outcome.duplicates == 0 and outcome.conflicts == 0
    assert outcome.position == 3
    assert engine.get("o", "a") == remote.get("o", "a")
    assert engine.get("o", "b") == remote.get("o", "b")
    assert engine.last_lsn() == 0 and engine.read_log(0, 10) == []
    assert engine.inbound_position("node-b") == 3
    assert engine.inbound_position("node-c") == 0
    assert engine.counts() == StoreCounts(records=1, tombstones=1)
    # A local write after the remote one supersedes it and gets this node's first dot.
    (local,) = commit_ok(engine, stamp, put("o", "a", b"local"))
    assert local.mutation.version.dot == Dot(NODE, 1) and local.mutation.lsn == 1
    assert local.had_live
    assert values(engine.get("o", "a")) == [b"local"]


def test_apply_remote_is_idempotent(harness: EngineHarness, engine: StorageEngine, stamp: Stamp) -> None:
    _, log = _remote_log(harness, stamp, put("o", "a", b"1"), put("o", "a", b"2"), put("o", "c", b"3"))
    engine.apply_remote("node-b", log, 3)
    before = {k: engine.get("o", k) for k in ("a", "c")}
    again = engine.apply_remote("node-b", log, 3)
    assert again.applied == () and again.duplicates == 3 and again.conflicts == 0
    assert {k: engine.get("o", k) for k in ("a", "c")} == before
    # Reversed: the older write of a is superseded by the newer one that already arrived.
    reversed_outcome = engine.apply_remote("node-b", list(reversed(log)), 3)
    assert reversed_outcome.duplicates == 3
    assert engine.counts() == StoreCounts(records=2, tombstones=0)


def test_apply_remote_counts_duplicates_within_a_batch(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    _, log = _remote_log(harness, stamp, put("o", "a", b"1"), put("o", "b", b"2"))
    outcome = engine.apply_remote("node-b", [log[0], log[1], log[0]], 2)
    assert outcome.applied == (log[0], log[1])
    assert outcome.duplicates == 1


def test_apply_remote_in_any_order_converges(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    _, log = _remote_log(harness, stamp, put("o", "a", b"1"), put("o", "a", b"2"), put("o", "a", b"3"))
    engine.apply_remote("node-b", [log[2], log[0]], 0)
    other = harness.open("third", node_id="node-c")
    other.apply_remote("node-b", log, 3)
    engine.apply_remote("node-b", [log[1]], 3)
    assert engine.get("o", "a") == other.get("o", "a")
    assert values(engine.get("o", "a")) == [b"3"]


def test_concurrent_writes_on_two_nodes_become_siblings_and_converge(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    remote = harness.open("remote", node_id="node-b", region="eu-central-1")
    commit_ok(engine, stamp, put("o", "k", b"from-a"))
    commit_ok(remote, stamp, put("o", "k", b"from-b"))
    to_a = engine.apply_remote("node-b", remote.read_log(0, 10), 1)
    to_b = remote.apply_remote(NODE, engine.read_log(0, 10), 1)
    assert to_a.conflicts == 1 and to_b.conflicts == 1
    assert engine.get("o", "k") == remote.get("o", "k")
    state = engine.get("o", "k")
    assert values(state) == [b"from-a", b"from-b"]
    # Resolving at one node with the merged context removes both siblings everywhere.
    assert state is not None
    (resolved,) = commit_ok(remote, stamp, put("o", "k", b"resolved", supersedes=state.context))
    engine.apply_remote("node-b", [resolved.mutation], resolved.mutation.lsn)
    assert values(engine.get("o", "k")) == [b"resolved"]
    assert engine.get("o", "k") == remote.get("o", "k")


def test_inbound_position_never_moves_back(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    _, log = _remote_log(harness, stamp, put("o", "a", b"1"))
    assert engine.apply_remote("node-b", log, 10).position == 10
    assert engine.apply_remote("node-b", [], 4).position == 10
    assert engine.inbound_position("node-b") == 10
    assert engine.apply_remote("node-b", [], 12).position == 12
    assert engine.apply_remote("node-c", [], 2).position == 2
    assert engine.inbound_position("node-b") == 12


def test_apply_remote_refuses_bad_input_and_changes_nothing(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    _, log = _remote_log(harness, stamp, put("o", "a", b"1"), put("o", "b", b"2"))
    engine.apply_remote("node-b", log[:1], 1)
    before = (engine.get("o", "a"), engine.get("o", "b"), engine.inbound_position("node-b"), engine.counts())
    tampered = replace(log[1], version=replace(log[1].version, value=b"tampered"))
    with pytest.raises(DataCorruption, match="o/b"):
        engine.apply_remote("node-b", [tampered], 2)
    with pytest.raises(InvalidArgument):
        engine.apply_remote("node-b", log[1:], -1)
    with pytest.raises(InvalidArgument):
        engine.apply_remote("", log[1:], 2)
    with pytest.raises(InvalidArgument):
        engine.apply_remote("node-b", [replace(log[1], namespace="Bad Name")], 2)
    no_dot = replace(log[1], version=replace(log[1].version, dot=Dot("", 0)))
    with pytest.raises(InvalidArgument):
        engine.apply_remote("node-b", [log[1], no_dot], 2)
    after = (engine.get("o", "a"), engine.get("o", "b"), engine.inbound_position("node-b"), engine.counts())
    assert after == before


# -- outbound acks and meta ------------------------------------------------------------------


def test_outbound_acks_never_move_back(engine: StorageEngine) -> None:
    assert engine.outbound_acks() == {}
    engine.record_outbound_ack("node-b", 5)
    engine.record_outbound_ack("node-c", 3)
    engine.record_outbound_ack("node-b", 2)
    assert engine.outbound_acks() == {"node-b": 5, "node-c": 3}
    engine.record_outbound_ack("node-b", 9)
    assert engine.outbound_acks() == {"node-b": 9, "node-c": 3}
    with pytest.raises(InvalidArgument):
        engine.record_outbound_ack("node-b", -1)
    with pytest.raises(InvalidArgument):
        engine.record_outbound_ack("", 1)
    assert engine.outbound_acks() == {"node-b": 9, "node-c": 3}


def test_meta_round_trips(engine: StorageEngine) -> None:
    assert engine.get_meta("topology") is None
    engine.put_meta("topology", b"\x00\x01 revision 1")
    assert engine.get_meta("topology") == b"\x00\x01 revision 1"
    engine.put_meta("topology", b"revision 2")
    engine.put_meta("empty", b"")
    assert engine.get_meta("topology") == b"revision 2"
    assert engine.get_meta("empty") == b""
    with pytest.raises(InvalidArgument):
        engine.put_meta("", b"x")


# -- durability ------------------------------------------------------------------------------


def test_everything_survives_close_and_reopen(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    commit_ok(engine, stamp, put("o", "a", b"1"), put("o", "b", b"2"), delete("o", "b"))
    _, log = _remote_log(harness, stamp, put("o", "r", b"remote"))
    engine.apply_remote("node-b", log, 7)
    engine.record_outbound_ack("node-b", 2)
    engine.put_meta("topology", b"t1")
    before = (
        engine.get("o", "a"),
        engine.get("o", "b"),
        engine.get("o", "r"),
        engine.read_log(0, 100),
        engine.last_lsn(),
        engine.counts(),
        engine.scan("o", "", "", 100),
    )
    reopened = harness.reopen(engine)
    after = (
        reopened.get("o", "a"),
        reopened.get("o", "b"),
        reopened.get("o", "r"),
        reopened.read_log(0, 100),
        reopened.last_lsn(),
        reopened.counts(),
        reopened.scan("o", "", "", 100),
    )
    assert after == before
    assert reopened.inbound_position("node-b") == 7
    assert reopened.outbound_acks() == {"node-b": 2}
    assert reopened.get_meta("topology") == b"t1"
    # Positions and dots continue where they stopped.
    (next_write,) = commit_ok(reopened, stamp, put("o", "a", b"again"))
    assert next_write.mutation.lsn == 4
    assert next_write.mutation.version.dot == Dot(NODE, 2)


def test_a_closed_engine_refuses_calls(harness: EngineHarness, engine: StorageEngine, stamp: Stamp) -> None:
    commit_ok(engine, stamp, put("o", "a", b"1"))
    engine.close()
    engine.close()  # closing twice is harmless
    with pytest.raises(Unavailable):
        engine.get("o", "a")
    with pytest.raises(Unavailable):
        engine.commit_local([put("o", "a", b"2")], stamp)
    with pytest.raises(Unavailable):
        engine.last_lsn()


# -- concurrency -----------------------------------------------------------------------------


def test_reads_from_threads_run_while_writes_commit(engine: StorageEngine, stamp: Stamp) -> None:
    batches, per_batch = 40, 25
    done = threading.Event()
    failures: list[BaseException] = []
    observed_lsns: list[int] = []

    def writer() -> None:
        try:
            for b in range(batches):
                commit_ok(
                    engine,
                    stamp,
                    *(put("o", f"k{(b * per_batch + i) % 300:03}", b"v%d" % b) for i in range(per_batch)),
                )
        except BaseException as error:
            failures.append(error)
        finally:
            done.set()

    def reader(n: int) -> None:
        last = 0
        reads = 0
        try:
            while not done.is_set() or reads < 5:
                reads += 1
                lsn = engine.last_lsn()
                assert lsn >= last, "last_lsn moved back"
                last = lsn
                log = engine.read_log(max(0, lsn - 30), 30)
                assert [m.lsn for m in log] == list(
                    range(max(0, lsn - 30) + 1, max(0, lsn - 30) + 1 + len(log))
                )
                for key, scanned in engine.scan("o", f"k{n}", "", 50):
                    assert scanned.has_live() and key.startswith(f"k{n}")
                state = engine.get("o", f"k{n}00")
                assert state is None or len(state.live()) == 1
                counts = engine.counts()
                assert 0 <= counts.records <= 300 and counts.tombstones == 0
            observed_lsns.append(last)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(n,)) for n in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert engine.last_lsn() == batches * per_batch
    assert engine.counts() == StoreCounts(records=300, tombstones=0)
    assert len(observed_lsns) == 3


# -- the sibling cap -------------------------------------------------------------------------


def test_a_write_past_the_sibling_cap_is_refused_naming_the_count_and_writes_nothing(
    engine: StorageEngine, stamp: Stamp
) -> None:
    for i in range(3):
        commit_ok(engine, stamp, replace(put("ns", "k", b"v%d" % i, CausalContext.empty()), siblings_max=3))
    before = engine.get("ns", "k")
    last_lsn = engine.last_lsn()
    (result,) = engine.commit_local(
        [replace(put("ns", "k", b"one too many", CausalContext.empty()), siblings_max=3)], stamp
    )
    assert isinstance(result, FailedPrecondition)
    assert "holds 3 versions" in str(result) and "would make 4" in str(result)
    assert "siblings_max of 3" in str(result)
    assert engine.get("ns", "k") == before
    assert engine.last_lsn() == last_lsn


def test_a_write_carrying_the_context_resolves_a_key_at_the_cap(engine: StorageEngine, stamp: Stamp) -> None:
    for i in range(3):
        commit_ok(engine, stamp, replace(put("ns", "k", b"v%d" % i, CausalContext.empty()), siblings_max=3))
    state = engine.get("ns", "k")
    assert state is not None
    (resolved,) = commit_ok(engine, stamp, replace(put("ns", "k", b"merged", state.context), siblings_max=3))
    assert values(resolved.state) == [b"merged"]


def test_a_write_that_does_not_add_a_version_is_accepted_on_a_key_past_the_cap(
    engine: StorageEngine, stamp: Stamp
) -> None:
    # Past the cap already (replicated siblings are kept, or the cap was lowered): a write that
    # supersedes one sibling leaves the count where it was, and is accepted.
    for i in range(4):
        commit_ok(engine, stamp, put("ns", "k", b"v%d" % i, CausalContext.empty()))
    state = engine.get("ns", "k")
    assert state is not None and len(state.versions) == 4
    one = CausalContext.of(dots=[state.versions[0].dot])
    (committed,) = commit_ok(engine, stamp, replace(put("ns", "k", b"replaces one", one), siblings_max=3))
    assert len(committed.state.versions) == 4
    (refused,) = engine.commit_local(
        [replace(put("ns", "k", b"adds one", CausalContext.empty()), siblings_max=3)], stamp
    )
    assert isinstance(refused, FailedPrecondition)


# -- request ids -----------------------------------------------------------------------------


def test_a_write_whose_request_id_the_key_remembers_is_answered_and_not_written_again(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    write = replace(put("ns", "k", b"once", CausalContext.empty()), request_id="req-1")
    (first,) = commit_ok(engine, stamp, write)
    last_lsn = engine.last_lsn()
    (retry,) = commit_ok(engine, stamp, write)
    assert retry.replayed and not first.replayed
    assert (retry.mutation.version.dot, retry.mutation.version.hlc) == (
        first.mutation.version.dot,
        first.mutation.version.hlc,
    )
    assert retry.mutation.lsn == first.mutation.lsn
    assert engine.last_lsn() == last_lsn
    assert values(engine.get("ns", "k")) == [b"once"]
    # Remembered in the stored state: a reopened engine answers the same.
    reopened = harness.reopen(engine)
    (again,) = commit_ok(reopened, stamp, write)
    assert again.replayed and again.mutation.version.dot == first.mutation.version.dot
    assert reopened.read_log(last_lsn, 10) == []


# -- withdrawing a copy (compliance remediation) ---------------------------------------------


def test_withdraw_removes_versions_here_only_without_logging_them(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    _, log = _remote_log(harness, stamp, put("o", "a", b"remote"))
    engine.apply_remote("node-b", log, log[-1].lsn)
    (mine,) = commit_ok(engine, stamp, put("o", "b", b"mine"))
    last = engine.last_lsn()
    remote_dot = log[0].version.dot
    after = engine.withdraw("o", "a", [remote_dot])
    assert after is not None and after.versions == ()
    assert engine.get("o", "a") == after and not after.context.covers(remote_dot)
    assert engine.withdraw("o", "b", [mine.mutation.version.dot]) is not None
    # Nothing entered the change log: no stream ships a withdrawal.
    assert engine.last_lsn() == last and len(engine.read_log(0, 10)) == last
    # The keys stay, with no live version (their contexts keep this node's counters).
    assert engine.counts().records == 0
    # The key's next local dot is past the withdrawn one of this node.
    (again,) = commit_ok(engine, stamp, put("o", "b", b"again"))
    assert again.mutation.version.dot.counter > mine.mutation.version.dot.counter
    # Withdrawing what is not there changes nothing.
    assert engine.withdraw("o", "a", [remote_dot]) is None
    assert engine.withdraw("o", "never", [remote_dot]) is None


def test_regression_a_withdrawn_twin_is_not_superseded_elsewhere_by_a_write_here(
    harness: EngineHarness, engine: StorageEngine, stamp: Stamp
) -> None:
    # A client write retried under one request id here and in another region: twins, of which
    # both stores keep the other region's (the smaller dot). This region then withdraws it. The
    # twin of this node stayed in the key's context, so a client's next write here, which never
    # saw the withdrawn version, superseded it in the other region too.
    remote = harness.open("remote", node_id="node-0", region="us-east-1")
    retried = LocalWrite("o", "k", b"once", request_id="r1")
    (mine,) = commit_ok(engine, stamp, retried)
    (theirs,) = commit_ok(remote, stamp, retried)
    kept = theirs.mutation.version.dot
    engine.apply_remote("node-0", remote.read_log(0, 10), 1)
    remote.apply_remote(NODE, engine.read_log(0, 10), 1)
    assert [v.dot for v in remote.get("o", "k").versions] == [kept]  # type: ignore[union-attr]
    assert engine.withdraw("o", "k", [kept]) is not None
    read = engine.get("o", "k")
    assert read is not None and read.versions == ()
    (later,) = commit_ok(engine, stamp, put("o", "k", b"later", supersedes=read.context))
    assert later.mutation.version.dot.counter > mine.mutation.version.dot.counter
    remote.apply_remote(NODE, [later.mutation], later.mutation.lsn)
    assert values(remote.get("o", "k")) == [b"later", b"once"]
    # A retry here is written again (the key forgot the request with the version), a blind
    # write superseding `later`; the other region takes it for the version it keeps.
    (again,) = commit_ok(engine, stamp, retried)
    assert not again.replayed and again.mutation.version.dot.counter > later.mutation.version.dot.counter
    remote.apply_remote(NODE, [again.mutation], again.mutation.lsn)
    assert [v.dot for v in remote.get("o", "k").versions] == [kept]  # type: ignore[union-attr]
    # Allowed again, the withdrawn version comes back here (the stream sent again) and takes
    # the place of the retry: both stores hold the same.
    engine.apply_remote("node-0", remote.read_log(0, 10), 1)
    assert engine.get("o", "k").versions == remote.get("o", "k").versions  # type: ignore[union-attr]
