"""bench.client.interleaved_ms: a figure and its baseline are made in turn, so that neither
gets a stretch of the machine to itself."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bench import client
from bench.client import Call, interleaved_ms


def recorder(made: list[tuple[str, int]]) -> Callable[[str], Call]:
    """Calls that note their name and index in `made`."""

    def call(name: str) -> Call:
        async def run(i: int) -> None:
            made.append((name, i))

        return run

    return call


async def test_calls_are_made_in_turn_in_an_order_drawn_every_round() -> None:
    made: list[tuple[str, int]] = []
    call = recorder(made)
    a, b = await interleaved_ms([call("a"), call("b")], 200, random.Random(7), warmup=3)
    assert len(a) == len(b) == 200
    warmup, measured = made[:6], made[6:]
    assert all(i < 0 for _, i in warmup)
    rounds = [measured[k : k + 2] for k in range(0, len(measured), 2)]
    # Every round makes each call once, with the round's own index.
    assert all({name for name, _ in r} == {"a", "b"} and r[0][1] == r[1][1] for r in rounds)
    # Both orders occur, so that neither call always follows the other.
    firsts = [r[0][0] for r in rounds]
    assert 60 < firsts.count("a") < 140


async def test_a_block_makes_that_many_calls_of_one_kind_in_a_row() -> None:
    made: list[tuple[str, int]] = []
    call = recorder(made)
    a, b = await interleaved_ms([call("a"), call("b")], 10, random.Random(3), warmup=0, block=4)
    assert len(a) == len(b) == 10
    # Rounds of 4, 4 and the last 2 calls of each kind, one kind's block after the other's.
    chunks, at = [], 0
    for size in (4, 4, 4, 4, 2, 2):
        chunks.append(made[at : at + size])
        at += size
    for chunk in chunks:
        names = {name for name, _ in chunk}
        indices = [i for _, i in chunk]
        assert len(names) == 1 and indices == list(range(indices[0], indices[0] + len(chunk)))
    assert [i for name, i in made if name == "a"] == list(range(10))


async def test_each_latency_is_its_own_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clock that only the calls move, a's calls take 1 us and b's 3 us: each list holds
    its own call's times, whatever the order of the rounds."""
    now = [0]
    monkeypatch.setattr(client.time, "perf_counter_ns", lambda: now[0])

    def call(ns: int):  # type: ignore[no-untyped-def]
        async def run(i: int) -> None:
            now[0] += ns

        return run

    a, b = await interleaved_ms([call(1_000), call(3_000)], 50, random.Random(5), warmup=2, block=3)
    assert a == [0.001] * 50
    assert b == [0.003] * 50
