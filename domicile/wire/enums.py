"""Protobuf enums are open: a newer peer may send a value this version has no name for."""

from __future__ import annotations

import enum
from typing import TypeVar

E = TypeVar("E", bound=enum.IntEnum)


def enum_or(kind: type[E], value: int, unknown: E) -> E:
    """`value` as a member of `kind`, or `unknown` when this version does not know it.

    Decoding never fails on a value from a newer peer: a node or client that refused a whole
    topology for one new enum value would reconnect for ever instead of working with the rest.
    """
    try:
        return kind(value)
    except ValueError:
        return unknown
