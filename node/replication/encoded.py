"""Change-log entries encoded for the wire once, for every link of this node.

A record of a namespace held in six regions goes out on five links; each link used to build
its protobuf message field by field in Python. The links read the same entries of the same
log, close together in time, so the first link to ship an entry encodes it and the others copy
the message (a copy in C). Only entries shipped as stored are kept: an opened value (a
subject's record, sealed at rest) is never kept in clear here.
"""

from __future__ import annotations

import collections

from domicile.causality import Mutation
from domicile.v1 import record_pb2 as pb
from domicile.wire.records import mutation_to_pb

# Entries kept: several seconds of the log at a few thousand writes/s, so that a link a little
# behind the others still finds what they encoded.
ENTRIES_MAX = 16_384

# (lsn, HLC, dot counter): one entry of this node's log. A store rebuilt from a backup numbers
# positions again, so the position alone could name another write.
_Key = tuple[int, int, int]


class EncodedLog:
    def __init__(self, entries_max: int = ENTRIES_MAX) -> None:
        self.entries_max = entries_max
        self._messages: collections.OrderedDict[_Key, pb.Mutation] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._messages)

    def message(self, m: Mutation) -> pb.Mutation:
        """The wire message of a change-log entry shipped as stored. Do not modify it: it is
        shared (copy it into a request)."""
        key = (m.lsn, m.version.hlc, m.version.dot.counter)
        msg = self._messages.get(key)
        if msg is not None:
            self.hits += 1
            return msg
        self.misses += 1
        msg = mutation_to_pb(m)
        self._messages[key] = msg
        if len(self._messages) > self.entries_max:
            self._messages.popitem(last=False)
        return msg
