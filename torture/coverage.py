"""Which operations of a key read a given version: the question the checker asks of every
acknowledged write and every live version, answered from an index instead of a scan.

A read's causal context covers a dot (node, counter) when its version vector holds `node` at
`counter` or beyond, or when the dot is one of the context's extra dots (`Seen.covers`). Asking
every read of a key about every version of it is quadratic in the key's operations: a 30-minute
run puts tens of thousands of operations on each contended key. The index answers in
O(log n): per node, the reads sorted by their vector's entry, each suffix knowing its earliest
two reads (in history order); and per extra dot, its earliest two reads.

Two, not one, because the checker asks both "which read covers this dot first" (the one named in
a resurrection) and "does any read other than the write itself cover it" (a write's own read may
cover its dot, and then it does not count as a superseder).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence

from torture.history import Dot, Op

_EARLIEST = 2  # how many of the earliest covering reads a query returns


def _earliest(positions: Sequence[int], more: Sequence[int] = ()) -> tuple[int, ...]:
    return tuple(sorted({*positions, *more})[:_EARLIEST])


class _NodeEntries:
    """The reads whose vector has an entry for one node, to find those at or beyond a counter."""

    def __init__(self, entries: list[tuple[int, int]]) -> None:
        entries.sort()  # by counter, then position
        self.counters = [counter for counter, _position in entries]
        # suffix[j]: the earliest positions among entries[j:]
        self.suffix: list[tuple[int, ...]] = [()] * (len(entries) + 1)
        for j in range(len(entries) - 1, -1, -1):
            self.suffix[j] = _earliest(self.suffix[j + 1], (entries[j][1],))

    def at_least(self, counter: int) -> tuple[int, ...]:
        return self.suffix[bisect_left(self.counters, counter)]


class CoverIndex:
    """The reads of one key, in history order, indexed by what their contexts cover. Only ops
    with a read belong in it."""

    def __init__(self, readers: Sequence[Op]) -> None:
        self.readers = list(readers)
        by_node: dict[str, list[tuple[int, int]]] = defaultdict(list)
        by_dot: dict[Dot, list[int]] = defaultdict(list)
        for position, op in enumerate(self.readers):
            assert op.read is not None, "only ops with a read are indexed"
            for node, counter in op.read.vv.items():
                by_node[node].append((counter, position))
            for node, counter in op.read.dots:
                by_dot[(node, counter)].append(position)
        self._nodes = {node: _NodeEntries(entries) for node, entries in by_node.items()}
        self._dots = {dot: _earliest(positions) for dot, positions in by_dot.items()}

    def covering(self, dot: Dot) -> list[Op]:
        """The earliest (at most two) reads whose context covers `dot`, in history order."""
        node, counter = dot
        if counter <= 0:  # a vector without the node holds it at 0, which covers such a dot
            return self.readers[:_EARLIEST]
        entries = self._nodes.get(node)
        by_vector = entries.at_least(counter) if entries is not None else ()
        positions = _earliest(by_vector, self._dots.get((node, counter), ()))
        return [self.readers[p] for p in positions]

    def first_covering(self, dot: Dot) -> Op | None:
        found = self.covering(dot)
        return found[0] if found else None

    def covered_by_another(self, dot: Dot, op: Op) -> bool:
        """Whether a read other than `op` itself covers `dot`."""
        return any(reader is not op for reader in self.covering(dot))
