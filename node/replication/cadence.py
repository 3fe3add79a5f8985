"""When one link may ship: its sync mode (domicile/sync_modes.py), kept for its sender.

Realtime links ship whenever the log has something. A batch link ships at most every
interval_s: when it has something to send and its turn has come, it drains the log (every
batch the log has, back to back) and then waits for its next turn. A scheduled link ships only
while one of its windows is open, draining what accumulated since the last one; a window that
closes mid-drain stops it until the next.

The sender calls two hooks (node/replication/outbound.py): `ready` before it sends a batch it
has read, and `drained` when the log has nothing more for the target.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from domicile.sync_modes import BATCH, REALTIME, REALTIME_CADENCE, SCHEDULED, LinkCadence

# A waiting link looks again at least this often (its mode may have changed meanwhile).
RECHECK_S = 30.0


class Cadence:
    def __init__(
        self,
        spec: LinkCadence = REALTIME_CADENCE,
        *,
        clock: Callable[[], float] = time.time,
        on_drained: Callable[[float], None] = lambda t: None,
        on_change: Callable[[LinkCadence], None] = lambda spec: None,
    ) -> None:
        self.clock = clock
        self.on_drained = on_drained
        self.on_change = on_change
        self._draining = False
        self._turn_started = -math.inf
        # Turns taken: times the link started shipping after having had nothing to send.
        self.turns = 0
        self.spec = spec
        on_change(spec)

    def replace(self, spec: LinkCadence) -> None:
        if spec != self.spec:
            self.spec = spec
            self.on_change(spec)

    def wait_s(self, now: float) -> float:
        """Seconds until the link may ship; 0 now."""
        spec = self.spec
        if spec.mode == REALTIME:
            return 0.0
        if spec.mode == BATCH:
            if self._draining:
                return 0.0
            return max(0.0, self._turn_started + spec.interval_s - now)
        if spec.mode == SCHEDULED and spec.window_open(now):
            return 0.0
        opening = spec.next_opening(now)
        return RECHECK_S if opening is None else max(1.0, opening - now)

    async def ready(self, stop: asyncio.Future[None]) -> None:
        """Returns when the link may ship (or when `stop`, the stream's ack reader, ends)."""
        while (wait := self.wait_s(self.clock())) > 0:
            sleeper = asyncio.ensure_future(asyncio.sleep(min(wait, RECHECK_S)))
            try:
                done, _ = await asyncio.wait({sleeper, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
            if stop in done:
                return
        if not self._draining:
            self._draining = True
            self._turn_started = self.clock()
            self.turns += 1

    def drained(self) -> None:
        """The log has nothing more for the target: the turn is over."""
        self._draining = False
        self.on_drained(self.clock())
