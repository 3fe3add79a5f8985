"""A link's position past log entries it skipped, held back for a moment before it is sent.

A link reads every entry of the change log, and most of a busy node's entries may belong to
namespaces the target does not hold. Such a batch carries no record, only the position it
moves the target to, yet sending it at once costs what a batch costs: a message each way and,
at the target, a commit (an fsync) to persist the position. Every write then woke every link
and every target, and on a node with many links a write for one of them paid, in CPU taken
from that link's own send and apply, for all the others.

So a position with nothing to carry is held, and sent when the link next sends records (just
before them, so that no message moves the target further than one batch read would), when it
has been held HOLD_S, or when it is span_max entries past what the target was last told. The
position only says what the target need not wait for: holding it delays no record, and no
acknowledgement of a record (an ack of a batch with records covers every position before it).
"""

from __future__ import annotations

# How long a position without records may wait to be sent (its link's backlog shows the
# skipped entries meanwhile, and change-log truncation waits for them).
HOLD_S = 0.1


class HeldPosition:
    def __init__(self, told: int, *, span_max: int, hold_s: float = HOLD_S) -> None:
        # The position the target was last told (the last through_lsn sent).
        self.told = told
        self.span_max = span_max
        self.hold_s = hold_s
        # The position held back, when there is one, and when it was first held.
        self.through: int | None = None
        self._since = 0.0

    def hold(self, through: int, now: float) -> None:
        if self.through is None:
            self._since = now
        self.through = through

    def fits(self, through: int) -> bool:
        """Whether holding `through` keeps the target within span_max of what it was told."""
        return through - self.told <= self.span_max

    def due_in(self, now: float) -> float | None:
        """Seconds until the held position must be sent (0 now); None when none is held."""
        if self.through is None:
            return None
        if self.through - self.told >= self.span_max:
            return 0.0
        return max(0.0, self._since + self.hold_s - now)

    def take(self) -> int:
        """The held position, to send now."""
        through = self.through
        if through is None:
            raise RuntimeError("no position is held")
        self.through = None
        self.told = through
        return through

    def sent(self, through: int) -> None:
        """A batch with records told the target `through` (after any held position was sent)."""
        self.told = through
