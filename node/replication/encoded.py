"""Change-log entries encoded for the wire once, for every link of this node.

A record of a namespace held in six regions goes out on five links; each link used to build
its protobuf message field by field in Python and serialize it again in its own request. The
links read the same entries of the same log, close together in time, so the first link to ship
an entry encodes and serializes it, framed as an element of a batch
(node.replication.batch_wire), and the others join those bytes into their requests. Only
entries shipped as stored are kept: an opened value (a subject's record, sealed at rest) is
never kept in clear here.
"""

from __future__ import annotations

import collections

from domicile.causality import Mutation
from domicile.wire.records import mutation_to_pb
from node.replication.batch_wire import framed_mutation

# Entries kept: several seconds of the log at a few thousand writes/s, so that a link a little
# behind the others still finds what they encoded.
ENTRIES_MAX = 16_384

# (lsn, HLC, dot counter): one entry of this node's log. A store rebuilt from a backup numbers
# positions again, so the position alone could name another write.
_Key = tuple[int, int, int]


class EncodedLog:
    def __init__(self, entries_max: int = ENTRIES_MAX) -> None:
        self.entries_max = entries_max
        self._framed: collections.OrderedDict[_Key, bytes] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._framed)

    def framed(self, m: Mutation) -> bytes:
        """A change-log entry shipped as stored, serialized and framed as an element of a
        batch (batch_wire.framed_mutation)."""
        key = (m.lsn, m.version.hlc, m.version.dot.counter)
        framed = self._framed.get(key)
        if framed is not None:
            self.hits += 1
            return framed
        self.misses += 1
        framed = framed_mutation(mutation_to_pb(m))
        self._framed[key] = framed
        if len(self._framed) > self.entries_max:
            self._framed.popitem(last=False)
        return framed
