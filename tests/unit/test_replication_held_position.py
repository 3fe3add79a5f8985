"""A position past skipped entries is held for HOLD_S, or until it is span_max past what the
target was last told, and never moves a message further than that."""

from __future__ import annotations

import pytest

from node.replication.held_position import HeldPosition


def test_nothing_held_is_never_due() -> None:
    held = HeldPosition(10, span_max=100, hold_s=0.1)
    assert held.due_in(0.0) is None
    with pytest.raises(RuntimeError):
        held.take()


def test_a_held_position_is_due_after_the_hold_from_when_it_was_first_held() -> None:
    held = HeldPosition(10, span_max=100, hold_s=0.1)
    held.hold(12, now=5.0)
    held.hold(15, now=5.08)  # held longer, not held anew
    assert held.due_in(5.05) == pytest.approx(0.05)
    assert held.due_in(5.1) == 0.0
    assert held.take() == 15
    assert held.told == 15
    assert held.due_in(5.2) is None


def test_a_position_span_max_past_what_the_target_was_told_is_due_at_once() -> None:
    held = HeldPosition(10, span_max=100, hold_s=10.0)
    held.hold(60, now=0.0)
    assert held.due_in(0.0) == pytest.approx(10.0)
    assert held.fits(110) and not held.fits(111)
    held.hold(110, now=0.0)
    assert held.due_in(0.0) == 0.0


def test_a_batch_with_records_moves_what_the_target_was_told() -> None:
    held = HeldPosition(10, span_max=100)
    held.sent(50)
    assert held.fits(150) and not held.fits(151)
