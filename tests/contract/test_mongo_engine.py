"""What is particular to the MongoDB engine: several nodes of a region over one database, and
what it refuses at start."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator

import bson
import pytest

from domicile.causality import CausalContext
from domicile.errors import DomicileError, FailedPrecondition, Unavailable
from domicile.ports import free_port
from node.engine.base import Committed, LocalWrite, StoreCounts
from node.engine.mongo import DOCUMENT_BYTES_MAX, MongoEngine, redact_uri
from tests.support.mongo import MongoServer, with_option

from .harness import REGION, commit_ok

Stamp = Callable[[], int]
NOTHING = CausalContext.of()


@pytest.fixture
def shared(mongo_server: MongoServer) -> Iterator[tuple[MongoEngine, MongoEngine]]:
    """Two nodes of one region over one database."""
    database = mongo_server.database_name("shared")
    a = MongoEngine(mongo_server.uri, database, "node-a", REGION)
    b = MongoEngine(mongo_server.uri, database, "node-b", REGION)
    yield a, b
    a.close()
    b.close()


def test_two_nodes_share_records_but_keep_their_own_logs_and_positions(
    shared: tuple[MongoEngine, MongoEngine], stamp: Stamp
) -> None:
    a, b = shared
    commit_ok(a, stamp, LocalWrite("o", "x", b"from a"))
    commit_ok(b, stamp, LocalWrite("o", "y", b"from b"), LocalWrite("o", "z", b"from b"))
    assert [v.value for v in b.get("o", "x").live()] == [b"from a"]  # type: ignore[union-attr]
    assert (a.last_lsn(), b.last_lsn()) == (1, 2)
    assert [m.key for m in a.read_log(0, 10)] == ["x"]
    assert [m.key for m in b.read_log(0, 10)] == ["y", "z"]
    assert a.counts() == b.counts() == StoreCounts(records=3, tombstones=0)
    a.put_meta("topology", b"a's")
    assert b.get_meta("topology") is None
    a.block_subject("digest", "req-1")
    assert b.blocked_subjects() == {"digest": "req-1"}  # the region's block list


def test_concurrent_writes_of_two_nodes_to_one_key_are_never_lost(
    shared: tuple[MongoEngine, MongoEngine], stamp: Stamp, rng: random.Random
) -> None:
    """Each write supersedes nothing (an empty context), so every write must survive as a
    sibling: a read-modify-write that raced the other node's would drop one."""
    a, b = shared
    rounds = 30
    keys = [f"k{i}" for i in range(3)]
    order = {name: [rng.choice(keys) for _ in range(rounds)] for name in ("a", "b")}
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def run(engine: MongoEngine, name: str) -> None:
        try:
            start.wait()
            for i, key in enumerate(order[name]):
                commit_ok(engine, stamp, LocalWrite("o", key, f"{name}{i}".encode(), supersedes=NOTHING))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=(e, n)) for e, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    for key in keys:
        written = {f"{n}{i}".encode() for n in ("a", "b") for i, k in enumerate(order[n]) if k == key}
        state = a.get("o", key)
        held = {v.value for v in state.live()} if state is not None else set()
        assert held == written, f"{key}: lost {sorted(written - held)}"
    assert a.last_lsn() == b.last_lsn() == rounds
    assert a.counts() == StoreCounts(records=len({*order["a"], *order["b"]}), tombstones=0)


def test_regression_a_key_another_node_purged_never_makes_this_node_reuse_a_dot(
    shared: tuple[MongoEngine, MongoEngine], stamp: Stamp
) -> None:
    # b purges the key a wrote and deleted: a's counters for it are gone from the shared record,
    # so a's next write to it must start above what a issued, read from the floor b raised.
    a, b = shared
    commit_ok(a, stamp, LocalWrite("o", "k", b"one"))
    [two] = commit_ok(a, stamp, LocalWrite("o", "k", b"two"))
    commit_ok(a, stamp, LocalWrite("o", "k", tombstone=True))
    assert b.purge_tombstones("o", ["k"], lambda _key, _state: True, 1) == 1
    [again] = commit_ok(a, stamp, LocalWrite("o", "k", b"again"))
    assert again.mutation.version.dot.counter > two.mutation.version.dot.counter + 1
    assert a.writer_ids_of("node-a") == ["node-a"]  # a floor is no store of a node


def test_regression_a_purge_by_one_node_is_the_purge_point_of_every_node_of_the_store(
    shared: tuple[MongoEngine, MongoEngine], stamp: Stamp
) -> None:
    # A bootstrap any daemon of the region serves carries the point before which the region's
    # tombstones may be gone; it was kept per daemon, so one that purged nothing sent 0 and its
    # target kept versions whose tombstones were purged by the other.
    a, b = shared
    commit_ok(a, stamp, LocalWrite("o", "k", b"one"))
    commit_ok(a, stamp, LocalWrite("o", "k", tombstone=True))
    assert b.purge_tombstones("o", ["k"], lambda _key, _state: True, 4242) == 1
    assert a.purged_before() == b.purged_before() == 4242
    assert b.purge_tombstones("o", ["k"], lambda _key, _state: True, 99) == 0
    assert a.purged_before() == 4242  # never back


def test_regression_a_retry_on_the_other_daemon_claims_no_position_of_its_log(
    shared: tuple[MongoEngine, MongoEngine], stamp: Stamp
) -> None:
    """A retry (same request id) answered by the region's other daemon was answered with the
    first daemon's change-log position, which the second daemon's service took for one of its
    own log (a synchronous write then waited for, or was answered on, an unrelated entry)."""
    a, b = shared
    for i in range(3):  # b's own log is ahead of a's
        commit_ok(b, stamp, LocalWrite("o", f"other{i}", b"x"))
    [first] = commit_ok(a, stamp, LocalWrite("o", "k", b"v", request_id="req-1"))
    assert first.mutation.lsn == 1
    [again] = b.commit_local([LocalWrite("o", "k", b"v", request_id="req-1")], stamp)
    assert isinstance(again, Committed) and again.replayed
    assert again.mutation.version.dot == first.mutation.version.dot
    assert again.mutation.lsn == 0, "written by node-a: no position of node-b's log"
    # Negative control: a retry on the daemon that made the version keeps its position.
    [same] = a.commit_local([LocalWrite("o", "k", b"v", request_id="req-1")], stamp)
    assert isinstance(same, Committed) and same.replayed and same.mutation.lsn == 1


def test_reads_outside_transactions_see_only_what_a_majority_holds(
    shared: tuple[MongoEngine, MongoEngine], stamp: Stamp
) -> None:
    """On a replica set a read of "local" can see a write that a failover then rolls back: a
    sender would ship a change-log entry whose position and dot are issued again to another
    write. A single-node server cannot roll back, so the setting itself is what is checked."""
    a, _ = shared
    m = a.mongo
    for collection in (m.key_states, m.changelog, m.counters, m.positions, m.meta):
        assert collection.read_concern.level == "majority", collection.name
    commit_ok(a, stamp, LocalWrite("o", "k", b"v"))
    assert [m.key for m in a.read_log(0, 10)] == ["k"] and a.get("o", "k") is not None


def test_a_database_of_another_region_is_refused(mongo_server: MongoServer) -> None:
    database = mongo_server.database_name("owned")
    MongoEngine(mongo_server.uri, database, "node-a", REGION).close()
    with pytest.raises(FailedPrecondition, match="belongs to region"):
        MongoEngine(mongo_server.uri, database, "node-a", "us-east-1")


def test_the_uris_own_timeouts_win_over_the_engines_defaults(mongo_server: MongoServer) -> None:
    for uri, selection_s, socket_s in (
        (mongo_server.uri, 2.0, 20.0),
        (with_option(mongo_server.uri, "serverselectiontimeoutms=700&socketTimeoutMS=9000"), 0.7, 9.0),
    ):
        engine = MongoEngine(uri, mongo_server.database_name("timeouts"), "node-a", REGION)
        try:
            options = engine.mongo.client.options
            assert options.server_selection_timeout == selection_s
            assert options.pool_options.socket_timeout == socket_s
            assert options.pool_options.connect_timeout == 2.0  # the default: the URI sets none
        finally:
            engine.close()


def test_an_unreachable_server_is_named_without_its_password() -> None:
    # Server selection bounded below the default 2 s (the URI's option wins): nothing answers.
    uri = f"mongodb://app:s3cret@127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    with pytest.raises(Unavailable, match="unreachable") as info:
        MongoEngine(uri, "db", "node-a", REGION)
    assert "s3cret" not in info.value.message and "app:***@127.0.0.1" in info.value.message
    assert redact_uri("mongodb://h:1/") == "mongodb://h:1/"


MIB = 1 << 20


def test_regression_a_state_within_its_kept_subjects_of_the_limit_refuses_only_its_write(
    mongo_server: MongoServer, stamp: Stamp
) -> None:
    """A key state's document keeps every subject it was about ($addToSet), after the versions
    about them are superseded. When a commit passes the 16 MiB document limit, the key's writes
    are judged one by one against the limit; the judgement counted only the state's own
    subjects, so a write within the kept subjects' bytes of the limit was judged to fit, the
    server refused it again, and every write of the key in the commit was refused, the ones that
    fit too."""
    engine = MongoEngine(mongo_server.uri, mongo_server.database_name("kept_subjects"), "node-a", REGION)
    try:
        # 400 subjects of 250 bytes, each a sibling; then one write that supersedes them all.
        subjects = [f"{i:03d}" + "s" * 247 for i in range(400)]
        commit_ok(
            engine, stamp, *(LocalWrite("o", "k", b"v", subject_id=s, supersedes=NOTHING) for s in subjects)
        )
        commit_ok(engine, stamp, LocalWrite("o", "k", b"only"))
        commit_ok(
            engine, stamp, *(LocalWrite("o", "k", bytes([i]) * MIB, supersedes=NOTHING) for i in range(15))
        )
        document = engine.backend.key_states.find_one({"k": "k"})  # type: ignore[attr-defined]
        assert document is not None and len(document["subjects"]) == 400
        kept_bytes = len(bson.encode({"subjects": document["subjects"]}))
        # A sibling that passes the limit by half the kept subjects' bytes: without them, it
        # would be as far under it.
        over = DOCUMENT_BYTES_MAX - len(bson.encode(document)) + kept_bytes // 2
        writes = [
            LocalWrite("o", "k", b"\x20" * over, supersedes=NOTHING),
            LocalWrite("o", "k", b"small", supersedes=NOTHING),
            LocalWrite("o", "other", b"fine"),
        ]
        results = engine.commit_local(writes, stamp)
        assert isinstance(results[0], DomicileError), results[0]
        assert "16 MiB" in results[0].message, results[0].message
        assert [type(r) for r in results[1:]] == [Committed, Committed], results
        state = engine.get("o", "k")
        assert state is not None and b"small" in {v.value for v in state.versions}
    finally:
        engine.close()


def test_regression_a_withdrawal_never_makes_another_node_of_the_store_reuse_a_dot(
    shared: tuple[MongoEngine, MongoEngine], mongo_server: MongoServer, stamp: Stamp
) -> None:
    # a withdraws, from the region's shared record, a version b wrote, and a version whose twin
    # b wrote (a request retried in another region, whose smaller dot is kept). Their dots, the
    # twin's too, leave the key's context; b's counter for the key fell with them, so b's next
    # write reused a dot that other regions had already seen, and they would have ignored it.
    a, b = shared
    remote = MongoEngine(mongo_server.uri, mongo_server.database_name("remote"), "node-0", "us-east-1")
    try:
        retried = LocalWrite("o", "twin", b"once", request_id="r1")
        commit_ok(b, stamp, retried)
        (theirs,) = commit_ok(remote, stamp, retried)
        a.apply_remote("node-0", [theirs.mutation], theirs.mutation.lsn)
        (own,) = commit_ok(b, stamp, LocalWrite("o", "own", b"b's"))
        for key, dot in (("twin", theirs.mutation.version.dot), ("own", own.mutation.version.dot)):
            state = a.withdraw("o", key, [dot])
            assert state is not None and state.versions == ()
            (next_write,) = commit_ok(b, stamp, LocalWrite("o", key, b"next"))
            assert next_write.mutation.version.dot.counter > 1, key
    finally:
        remote.close()
