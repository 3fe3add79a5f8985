"""The bounded memo that a cache hit's decoded state, plan and answer are kept in."""

from __future__ import annotations

from domicile.memo import remember


def test_a_full_memo_drops_its_oldest_entry_for_a_new_key_and_none_for_a_known_one() -> None:
    memo: dict[str, int] = {}
    for i, key in enumerate("abc"):
        remember(memo, key, i, 3)
    remember(memo, "b", 10, 3)  # known: replaced in place, nothing dropped
    assert memo == {"a": 0, "b": 10, "c": 2}
    remember(memo, "d", 3, 3)  # new: the oldest ("a") goes
    assert memo == {"b": 10, "c": 2, "d": 3}
    assert len(memo) == 3
