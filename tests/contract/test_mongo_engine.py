"""What is particular to the MongoDB engine: several nodes of a region over one database, and
what it refuses at start."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator

import pytest

from domicile.causality import CausalContext
from domicile.errors import FailedPrecondition, Unavailable
from domicile.ports import free_port
from node.engine.base import LocalWrite, StoreCounts
from node.engine.mongo import MongoEngine, redact_uri
from tests.support.mongo import MongoServer

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


def test_a_database_of_another_region_is_refused(mongo_server: MongoServer) -> None:
    database = mongo_server.database_name("owned")
    MongoEngine(mongo_server.uri, database, "node-a", REGION).close()
    with pytest.raises(FailedPrecondition, match="belongs to region"):
        MongoEngine(mongo_server.uri, database, "node-a", "us-east-1")


def test_an_unreachable_server_is_named_without_its_password() -> None:
    uri = f"mongodb://app:s3cret@127.0.0.1:{free_port()}/"
    with pytest.raises(Unavailable, match="unreachable") as info:
        MongoEngine(uri, "db", "node-a", REGION)
    assert "s3cret" not in info.value.message and "app:***@127.0.0.1" in info.value.message
    assert redact_uri("mongodb://h:1/") == "mongodb://h:1/"
