"""When a cache over a shared store may answer (node/cache/others.py): only within the bound of
the last confirmation, through an outage it was within the bound when it began, never after a
stream that could not resume."""

from __future__ import annotations

from collections.abc import Iterable

from node.cache.coherence import Key
from node.cache.others import OtherWriters

LAG = 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def writers(clock: Clock) -> tuple[OtherWriters, list[list[Key]], list[str]]:
    published: list[list[Key]] = []
    abandoned: list[str] = []

    def publish(keys: Iterable[Key]) -> None:
        published.append(list(keys))

    return (
        OtherWriters(publish, lambda: abandoned.append("abandon"), lag_max_s=LAG, clock=clock),
        published,
        abandoned,
    )


def test_untrusted_until_a_confirmation_and_again_once_it_is_older_than_the_bound() -> None:
    clock = Clock()
    others, _, _ = writers(clock)
    assert not others.trusted()
    others.confirmed(clock.now)
    assert others.trusted()
    clock.now += LAG
    assert others.trusted()
    clock.now += 0.001
    assert not others.trusted()
    others.confirmed(clock.now - 0.1)
    assert others.trusted()
    others.confirmed(clock.now - 10)  # an older confirmation arriving late moves nothing back
    assert others.trusted()


def test_changes_are_published_as_told() -> None:
    clock = Clock()
    others, published, _ = writers(clock)
    others.changed([("ns", "a")])
    others.changed([("ns", "b"), ("ns", "c")])
    assert published == [[("ns", "a")], [("ns", "b"), ("ns", "c")]]
    assert others.told == 3


def test_an_outage_keeps_the_trust_it_began_with() -> None:
    clock = Clock()
    others, _, _ = writers(clock)
    others.confirmed(clock.now)
    clock.now += 5  # noticing the outage took the driver's timeout
    others.unreachable(since=clock.now - 4.8)  # the failing call began 0.2 s after the confirmation
    assert others.trusted()
    clock.now += 60
    assert others.trusted()  # nothing can change in a store that does not answer
    others.reconnected()
    assert not others.trusted()  # answering again: back to the bound, until the next fence
    others.confirmed(clock.now)
    assert others.trusted()


def test_an_outage_that_began_outside_the_bound_is_not_trusted() -> None:
    clock = Clock()
    others, _, _ = writers(clock)
    others.confirmed(clock.now)
    others.unreachable(since=clock.now + LAG + 0.1)
    clock.now += LAG + 2
    assert not others.trusted()
    others.unreachable(since=clock.now)  # repeated reports of one outage change nothing
    assert not others.trusted()


def test_a_lost_stream_abandons_the_generation_and_waits_for_a_new_confirmation() -> None:
    clock = Clock()
    others, _, abandoned = writers(clock)
    others.confirmed(clock.now)
    others.lost()
    assert abandoned == ["abandon"] and not others.trusted() and others.losses == 1
    others.unreachable(since=clock.now)
    assert not others.trusted()
    others.reconnected()
    others.confirmed(clock.now)
    assert others.trusted()
