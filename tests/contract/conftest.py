"""Fixtures of the engine contract suite.

Every engine is reached through a harness that can open a named store, close it and open it
again (durability tests reopen). To put another engine under the contract, add its harness
factory to HARNESSES; every test that takes the `harness` or `engine` fixture then runs
against it too.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from domicile.hlc import HybridClock
from node.engine.base import StorageEngine

from .harness import EngineHarness, MongoHarness, SQLiteHarness

# name -> factory(request, tmp_path). A factory may use request.getfixturevalue to reach a
# server fixture (a database server started on a free port).
HARNESSES: dict[str, Callable[[pytest.FixtureRequest, Path], EngineHarness]] = {
    "sqlite": lambda request, tmp_path: SQLiteHarness(tmp_path),
    "mongodb": lambda request, tmp_path: MongoHarness(request.getfixturevalue("mongo_server")),
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineHarness]:
    h = HARNESSES[request.param](request, tmp_path)
    try:
        yield h
    finally:
        h.close_all()


@pytest.fixture
def engine(harness: EngineHarness) -> StorageEngine:
    return harness.open()


@pytest.fixture
def clock() -> HybridClock:
    return HybridClock()


@pytest.fixture
def stamp(clock: HybridClock) -> Callable[[], int]:
    return clock.now


@pytest.fixture
def rng() -> random.Random:
    """A seeded random source; the seed is printed (shown when a test fails) and replayed with
    DOMICILE_TEST_SEED=<seed>."""
    seed = int(os.environ.get("DOMICILE_TEST_SEED") or random.randrange(2**32))
    print(f"random seed {seed}; replay with DOMICILE_TEST_SEED={seed}")
    return random.Random(seed)
