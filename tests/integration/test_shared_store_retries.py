"""A retry answered by another daemon of the region over the same MongoDB database: the
version is the first attempt's, and its change-log position is not this daemon's to claim."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from domicile.errors import DomicileError
from domicile.hlc import HybridClock
from node.engine.base import Committed, LocalWrite
from node.engine.mongo import MongoEngine
from tests.support.mongo import MongoServer

REGION = "eu-west-1"
Stamp = Callable[[], int]


@pytest.fixture
def shared(mongo_server: MongoServer) -> Iterator[tuple[MongoEngine, MongoEngine]]:
    """Two daemons of one region over one database."""
    database = mongo_server.database_name("retries")
    a = MongoEngine(mongo_server.uri, database, "node-a", REGION)
    b = MongoEngine(mongo_server.uri, database, "node-b", REGION)
    yield a, b
    a.close()
    b.close()


def _ok(engine: MongoEngine, stamp: Stamp, *writes: LocalWrite) -> list[Committed]:
    results = engine.commit_local(list(writes), stamp)
    assert not [r for r in results if isinstance(r, DomicileError)], results
    return [r for r in results if isinstance(r, Committed)]


def test_a_retry_on_the_other_daemon_claims_no_position_of_its_log(
    shared: tuple[MongoEngine, MongoEngine],
) -> None:
    """Regression: the retry was answered with the first daemon's change-log position, which
    the second daemon's service took for one of its own log (a synchronous write then waited
    for, or was answered on the strength of, an unrelated entry of its log)."""
    a, b = shared
    stamp = HybridClock().now
    for i in range(3):  # b's own log is ahead of a's
        _ok(b, stamp, LocalWrite("o", f"other{i}", b"x"))
    [first] = _ok(a, stamp, LocalWrite("o", "k", b"v", request_id="req-1"))
    assert first.mutation.lsn == 1
    [again] = b.commit_local([LocalWrite("o", "k", b"v", request_id="req-1")], stamp)
    assert isinstance(again, Committed) and again.replayed
    assert again.mutation.version.dot == first.mutation.version.dot
    assert again.mutation.lsn == 0, "written by node-a: no position of node-b's log"
    # Negative control: a retry on the daemon that made the version keeps its position.
    [same] = a.commit_local([LocalWrite("o", "k", b"v", request_id="req-1")], stamp)
    assert isinstance(same, Committed) and same.replayed and same.mutation.lsn == 1
