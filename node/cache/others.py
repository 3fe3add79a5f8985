"""What a node's cache knows of the changes *other* nodes make to a store they share with it (the
daemons of a region over one MongoDB database), and whether that is recent enough to answer.

The store tells (node/engine/mongo_changes.py) every key another node changed, in commit order,
and confirms from time to time that everything another node acknowledged before a moment T has
been told. Each change told is published to the cache like a change of this node's own
(`Coherence.changed`: the key is dirty until its entry is deleted in Redis), so the argument of
node/cache/coherence.py covers it: a fill that read the store before the change is refused, an
entry found before it is not served.

The bound. A read may use the cache only while the last confirmation is at most `lag_max_s`
old. A read that starts at time t therefore never returns a state older than a write another
node acknowledged before t - lag_max_s: such a write was told (its key made dirty) before the
confirmation, and the confirmation is at or after t - lag_max_s. A write acknowledged within the
last lag_max_s may be hidden for at most that long.

While the store is unreachable, nothing can change in it, and the cache keeps answering (that is
what it is for) if it was within the bound when the call that found the store gone started; a
write another node acknowledged after the last confirmation before the outage (normally less
than one wait of the stream or one fence interval, 0.125-0.2 s) may then stay hidden until the store
answers again and its change comes through. With one node per region nothing can be hidden.

When the stream cannot resume, what happened is unknown: the cache starts a new generation
(nothing it held is read again) and waits for a new confirmation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from node.cache.coherence import Key


class OtherWriters:
    """Thread-safe; its listener methods run on the store's change thread, `trusted` on reads."""

    def __init__(
        self,
        publish: Callable[[Iterable[Key]], None],
        abandon: Callable[[], None],
        *,
        lag_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self._abandon = abandon
        self.lag_max_s = lag_max_s
        self._clock = clock
        self._lock = threading.Lock()
        self._confirmed_at = float("-inf")
        self._unreachable = False
        # Whether the cache was within the bound when the store stopped answering.
        self._trusted_when_lost_sight = False
        self.told = 0
        self.losses = 0

    # -- the store's change thread (node.engine.mongo_changes.ChangeListener) -----------------

    def changed(self, keys: list[Key]) -> None:
        self.told += len(keys)
        self._publish(keys)

    def confirmed(self, started_at: float) -> None:
        with self._lock:
            self._confirmed_at = max(self._confirmed_at, started_at)
            self._unreachable = False

    def unreachable(self, since: float) -> None:
        with self._lock:
            if not self._unreachable:
                self._unreachable = True
                # Dated from the call that failed: noticing an outage can take the driver's
                # server selection timeout, during which nothing could be confirmed.
                self._trusted_when_lost_sight = since - self._confirmed_at <= self.lag_max_s

    def reconnected(self) -> None:
        # Answers again: back to the bound, which the next confirmation meets.
        with self._lock:
            self._unreachable = False

    def lost(self) -> None:
        with self._lock:
            self._confirmed_at = float("-inf")
            self._unreachable = False
            self._trusted_when_lost_sight = False
            self.losses += 1
        self._abandon()

    # -- reads ----------------------------------------------------------------------------------

    def trusted(self) -> bool:
        with self._lock:
            if self._unreachable:
                return self._trusted_when_lost_sight
            return self._within_bound()

    def _within_bound(self) -> bool:
        return self._clock() - self._confirmed_at <= self.lag_max_s
