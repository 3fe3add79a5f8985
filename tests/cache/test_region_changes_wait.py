"""The change-stream follower of a node's cache (node/engine/mongo_changes.py) against a real
MongoDB wire-protocol server (SecantusDB), with no writes: it must wait on the server between
answers rather than ask again at once (each answer costs the node's Gets time under the GIL,
which set the p99 of a cache hit on the MongoDB engine), and still confirm often enough that
the cache stays within its staleness bound. Negative controls: a follower that asks much more
often breaks the first check, and one that waits longer than the bound breaks the second."""

from __future__ import annotations

import time
from dataclasses import dataclass

from node.cache.others import OtherWriters
from node.engine.mongo import MongoEngine
from node.engine.mongo_changes import RegionChanges, await_for_bound
from tests.support.mongo import MongoServer

REGION = "eu-west-1"
LAG_MAX_S = 0.5
WATCH_S = 1.5
SAMPLE_S = 0.01
# Answers beyond one per wait: the first answer of the stream, and one more for the window's edges.
ANSWERS_SLACK = 2


@dataclass(frozen=True)
class Watched:
    empty_answers: int
    samples: int
    # Samples at which the cache would not have been used (the last confirmation too old).
    lapses: int


def watch_idle_stream(mongo: MongoServer, await_s: float) -> Watched:
    engine = MongoEngine(mongo.uri, mongo.database_name("region_changes_wait"), "n1", REGION)
    others = OtherWriters(lambda keys: None, lambda: None, lag_max_s=LAG_MAX_S)
    changes = RegionChanges(engine.mongo, others, await_s=await_s)
    changes.start()
    try:
        deadline = time.monotonic() + 20
        while not others.trusted():
            assert time.monotonic() < deadline, "the stream never confirmed"
            time.sleep(SAMPLE_S)
        first = changes.empty_answers
        samples = lapses = 0
        end = time.monotonic() + WATCH_S
        while time.monotonic() < end:
            samples += 1
            lapses += not others.trusted()
            time.sleep(SAMPLE_S)
        return Watched(changes.empty_answers - first, samples, lapses)
    finally:
        changes.close()
        engine.close()


def at_most_one_answer_per_wait(watched: Watched, await_s: float) -> bool:
    return watched.empty_answers <= WATCH_S / await_s + ANSWERS_SLACK


def test_an_idle_stream_waits_on_the_server_and_keeps_the_cache_within_its_bound(
    mongo_server: MongoServer,
) -> None:
    await_s = await_for_bound(LAG_MAX_S)
    watched = watch_idle_stream(mongo_server, await_s)
    print(f"wait {await_s} s: {watched}")
    assert watched.empty_answers >= 2, watched
    assert at_most_one_answer_per_wait(watched, await_s), watched
    assert watched.lapses == 0, watched


def test_negative_control_a_stream_that_asks_at_once_breaks_the_ceiling(mongo_server: MongoServer) -> None:
    watched = watch_idle_stream(mongo_server, 0.005)
    print(f"wait 0.005 s: {watched}")
    assert not at_most_one_answer_per_wait(watched, await_for_bound(LAG_MAX_S)), watched


def test_negative_control_a_wait_longer_than_the_bound_lapses(mongo_server: MongoServer) -> None:
    await_s = LAG_MAX_S * 1.2
    watched = watch_idle_stream(mongo_server, await_s)
    print(f"wait {await_s} s: {watched}")
    assert watched.lapses > 0, watched
