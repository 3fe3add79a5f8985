"""What an unchecked rewind (the negative control) has provoked, read from the history.

A node put back on an old copy of its store hands out again the dots it gave the writes it
acknowledged since the copy, but only to writes of the same keys, only if it acknowledges any
after its restart, and only until its peers tell it those counters back (replication and
anti-entropy carry its lost versions to it). On timing alone a short run on a loaded machine
often got none: the clients reconnected after the node had heard from its peers, and the
checker saw writes lost but no dot reused. So the nemesis holds the rewind until the node has
acknowledged a write since the copy, restarts it cut off from its peers (not from its clients),
and heals that cut once the node has acknowledged a write of a key it wrote since the copy
(`provoked`), or after a bounded wait. From then on both symptoms are the node's doing: it gave
that key a dot it had given before, and the checker must find the reuse and the lost writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torture.history import Op


@dataclass
class Rewind:
    """One unchecked rewind of `region`; times are monotonic."""

    region: str
    copied: float  # the copy was taken and the node ran on
    killed: float | None = None  # the node was killed to be put back on the copy
    restarted: float | None = None  # the node answered again, on the copy
    provoked: bool = False  # see `provoked`


def _acknowledged_writes(ops: Iterable[Op], region: str, after: float, before: float) -> list[Op]:
    """Writes the node of `region` acknowledged with a dot, started after `after` and finished
    before `before` (seconds since the workload's start)."""
    return [
        op
        for op in ops
        if op.region == region
        and op.outcome == "ok"
        and op.dot is not None
        and op.start_s > after
        and (op.end_s or 0.0) < before
    ]


def written_since_copy(ops: Iterable[Op], rewind: Rewind, t0: float) -> bool:
    """The node acknowledged a write after its copy was taken: a rewind now takes it back."""
    return bool(_acknowledged_writes(ops, rewind.region, rewind.copied - t0, float("inf")))


def provoked(ops: list[Op], rewind: Rewind, t0: float) -> bool:
    """Since its restart the rewound node acknowledged a write of a key it had acknowledged a
    write of between the copy and the kill (so it gave that key a dot it had given before)."""
    if rewind.killed is None or rewind.restarted is None:
        return False
    window = _acknowledged_writes(ops, rewind.region, rewind.copied - t0, rewind.killed - t0)
    keys = {(op.namespace, op.key) for op in window}
    after = _acknowledged_writes(ops, rewind.region, rewind.restarted - t0, float("inf"))
    return any((op.namespace, op.key) in keys for op in after)


async def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.1) -> bool:
    """Polls `condition` until it holds (True) or `timeout_s` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll_s)
    return True
