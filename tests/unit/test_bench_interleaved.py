"""bench.client.interleaved_ms: a figure and its baseline are made in turn, so that neither
gets a stretch of the machine to itself."""

from __future__ import annotations

import random

from bench.client import interleaved_ms


async def test_calls_are_made_in_turn_in_an_order_drawn_every_round() -> None:
    made: list[tuple[str, int]] = []

    def call(name: str):  # type: ignore[no-untyped-def]
        async def run(i: int) -> None:
            made.append((name, i))

        return run

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
