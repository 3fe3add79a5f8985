"""Bounded memos: dicts that drop their oldest entry to take a new one past their bound.

A hit's decoded state, its plan and its encoded answer are each remembered by the entry's bytes
this way (node/cache/read_cache.py, node/cache/hit_plans.py, node/api/read_answers.py): a dict
keeps insertion order, so its first key is the oldest, and dropping it costs no bookkeeping on
the hit's path (no LRU reordering on every read)."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, value: V, most: int) -> None:
    """memo[key] = value, first dropping the oldest entry when memo holds `most` entries and
    `key` is not one of them."""
    if len(memo) >= most and key not in memo:
        del memo[next(iter(memo))]
    memo[key] = value
