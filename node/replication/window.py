"""The batches a replication link has sent and the target has not acknowledged yet.

A sender sends as soon as the log grows, so under a steady load its batches are small (a group
commit's worth), and over a link with a round trip of r it has about rate x r records in flight
in many small batches. Counting the window in batches would stall such a link: 32 batches of
three records is under 100 records, a tenth of a second at 1,000 writes/s, so over a 100 ms
round trip the window would fill and every record would wait a round trip more. The window is
counted instead in what the batches carry: at most `batches_full` full batches' worth of records
and of bytes, in at most `messages_max` messages (the bookkeeping's bound). A batch is always
let in when nothing is in flight, whatever its size.

Acks are cumulative (the target acknowledges a position: everything up to it is applied). An ack
releases every batch whose through_lsn it covers; one that covers nothing new (late, repeated,
or below an ack already seen) releases nothing. A lost ack is made good by the next one. After
a reconnect the window starts empty, from the position the target says it holds.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from domicile.errors import InvalidArgument

# Bound on the messages in flight per link (the target reads at most this many ahead too:
# node.replication.coalesce.RECEIVED_BATCHES_MAX).
MESSAGES_MAX = 1024


@dataclass(frozen=True)
class InFlight:
    through_lsn: int
    records: int
    bytes: int
    sent_at: float


class SendWindow:
    def __init__(self, *, records_max: int, bytes_max: int, messages_max: int = MESSAGES_MAX) -> None:
        for name, value in (
            ("records_max", records_max),
            ("bytes_max", bytes_max),
            ("messages_max", messages_max),
        ):
            if value < 1:
                raise InvalidArgument(f"send window {name} is {value}; it must be at least 1")
        self.records_max = records_max
        self.bytes_max = bytes_max
        self.messages_max = messages_max
        self._inflight: collections.deque[InFlight] = collections.deque()
        self._records = 0
        self._bytes = 0
        self._acked = 0
        self._released = asyncio.Event()

    @classmethod
    def of_batches(cls, batches_full: int, batch_records_max: int, batch_bytes_max: int) -> SendWindow:
        return cls(records_max=batches_full * batch_records_max, bytes_max=batches_full * batch_bytes_max)

    def __len__(self) -> int:
        return len(self._inflight)

    @property
    def records(self) -> int:
        return self._records

    @property
    def acked_lsn(self) -> int:
        """The highest position acknowledged on this window."""
        return self._acked

    def fits(self, records: int, bytes_: int) -> bool:
        if not self._inflight:
            return True
        return (
            len(self._inflight) < self.messages_max
            and self._records + records <= self.records_max
            and self._bytes + bytes_ <= self.bytes_max
        )

    async def wait_fits(self, records: int, bytes_: int) -> None:
        """Until a batch of this size fits (an ack released enough)."""
        while not self.fits(records, bytes_):
            self._released.clear()
            await self._released.wait()

    def sent(self, through_lsn: int, records: int, bytes_: int, at: float) -> None:
        if self._inflight and through_lsn <= self._inflight[-1].through_lsn:
            raise InvalidArgument(
                f"batch through {through_lsn} sent after one through {self._inflight[-1].through_lsn}; "
                "a link sends positions in increasing order"
            )
        self._inflight.append(InFlight(through_lsn, records, bytes_, at))
        self._records += records
        self._bytes += bytes_

    def acked(self, position: int) -> int:
        """Releases every batch the ack covers; returns how many."""
        self._acked = max(self._acked, position)
        released = 0
        while self._inflight and self._inflight[0].through_lsn <= position:
            batch = self._inflight.popleft()
            self._records -= batch.records
            self._bytes -= batch.bytes
            released += 1
        if released:
            self._released.set()
        return released

    def oldest_sent_at(self) -> float | None:
        """When the oldest unacknowledged batch was sent (None when none is in flight)."""
        return self._inflight[0].sent_at if self._inflight else None
