"""The send window of a replication link (node.replication.window): counted in records and
bytes, released by cumulative acks, whatever order or number they arrive in."""

from __future__ import annotations

import asyncio

import pytest

from domicile.errors import InvalidArgument
from node.replication.window import SendWindow


def window(records_max: int = 10, bytes_max: int = 1000, messages_max: int = 100) -> SendWindow:
    return SendWindow(records_max=records_max, bytes_max=bytes_max, messages_max=messages_max)


def test_small_batches_share_the_window_by_what_they_carry() -> None:
    w = window(records_max=10)
    for through in range(1, 11):
        assert w.fits(1, 10)
        w.sent(through, 1, 10, 0.0)
    # Ten one-record batches fill a ten-record window; a batch-counted window of 10 would too,
    # but one of 32 batches would let 32 in: the bound is what they carry, not how many.
    assert not w.fits(1, 10)
    assert w.records == 10


def test_the_bytes_and_the_messages_bound_the_window_too() -> None:
    w = window(records_max=100, bytes_max=100, messages_max=3)
    w.sent(1, 1, 60, 0.0)
    assert not w.fits(1, 41)
    assert w.fits(1, 40)
    w.sent(2, 1, 20, 0.0)
    w.sent(3, 1, 10, 0.0)
    assert not w.fits(1, 1)  # three messages in flight


def test_an_empty_window_lets_in_a_batch_larger_than_itself() -> None:
    w = window(records_max=5, bytes_max=50)
    assert w.fits(500, 5000)
    w.sent(500, 500, 5000, 0.0)
    assert not w.fits(1, 1)


def test_a_cumulative_ack_releases_every_batch_it_covers() -> None:
    w = window()
    for through in (3, 7, 9):
        w.sent(through, 2, 10, float(through))
    assert w.acked(7) == 2
    assert len(w) == 1 and w.records == 2
    assert w.oldest_sent_at() == 9.0


def test_a_late_ack_below_one_seen_releases_nothing() -> None:
    w = window()
    for through in (1, 2, 3, 4):
        w.sent(through, 1, 10, 0.0)
    # Acks for 2 and 3 arrive in the wrong order: 3 releases 1..3, then 2 is old news.
    assert w.acked(3) == 3
    assert w.acked(2) == 0
    assert w.acked_lsn == 3
    assert len(w) == 1


def test_a_lost_ack_is_made_good_by_the_next() -> None:
    w = window()
    for through in (10, 20, 30):
        w.sent(through, 1, 10, 0.0)
    # The ack for 10 never arrives; the one for 20 covers it.
    assert w.acked(20) == 2
    assert w.acked(30) == 1
    assert len(w) == 0 and w.records == 0 and w.oldest_sent_at() is None


def test_an_ack_between_batches_releases_only_those_it_covers() -> None:
    w = window()
    w.sent(10, 1, 10, 0.0)
    w.sent(20, 1, 10, 0.0)
    # A target that skipped entries may acknowledge a position inside a batch's range.
    assert w.acked(15) == 1
    assert len(w) == 1


async def test_a_sender_waiting_for_room_wakes_on_the_ack_that_makes_it() -> None:
    w = window(records_max=2)
    w.sent(1, 1, 10, 0.0)
    w.sent(2, 1, 10, 0.0)
    waiting = asyncio.create_task(w.wait_fits(1, 10))
    await asyncio.sleep(0)
    assert not waiting.done()
    w.acked(0)  # covers nothing: still waiting
    await asyncio.sleep(0)
    assert not waiting.done()
    w.acked(1)
    await asyncio.wait_for(waiting, 1.0)


def test_positions_sent_must_increase() -> None:
    w = window()
    w.sent(5, 1, 10, 0.0)
    with pytest.raises(InvalidArgument, match="increasing order"):
        w.sent(5, 1, 10, 0.0)


def test_a_window_of_nothing_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="records_max is 0"):
        SendWindow(records_max=0, bytes_max=1)


def test_the_default_window_is_the_limits_full_batches_worth() -> None:
    w = SendWindow.of_batches(32, 500, 4 * 1024 * 1024)
    assert (w.records_max, w.bytes_max) == (16_000, 128 * 1024 * 1024)
