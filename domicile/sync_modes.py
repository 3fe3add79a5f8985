"""How often a namespace's records are shipped to the regions it replicates to.

The specification's three sync types, per namespace and per target region (its links):

- `realtime` (the default): each write is shipped as soon as it commits;
- `batch`: shipped at most every `interval_s` seconds, in bulk (for reporting regions, where
  the cost of many small transfers matters more than lag);
- `scheduled`: shipped only while a window is open: `window` is a cron expression (UTC, five
  fields: minute hour day-of-month month day-of-week) for when it opens, `window_s` how long
  it stays open.

In the cluster config (`to` names the target regions the mode applies to; without it, all):

    sync: {mode: batch, interval_s: 300, to: [us-west-2]}
    sync: {mode: scheduled, window: "0 2 * * *", window_s: 3600}

A link carries several namespaces over one change log whose positions cannot skip an entry and
come back to it, so a link ships as eagerly as its most eager namespace: realtime if any of its
namespaces is realtime toward the target, else batch at the shortest interval, else only while
one of the windows is open. `allowance_s` is the lag the link's mode expects at most, which the
lag alerts add to the one-second promise.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from domicile.errors import InvalidArgument

REALTIME = "realtime"
BATCH = "batch"
SCHEDULED = "scheduled"
MODES = (REALTIME, BATCH, SCHEDULED)
INTERVAL_S_MAX = 86_400.0
WINDOW_S_MAX = 86_400.0
# How far ahead a window's next opening is looked for (a cron that opens less often than this
# is refused at load).
HORIZON_S = 8 * 86_400

_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression: numbers, `*`, lists `a,b`, ranges `a-b` and steps `*/n`
    or `a-b/n`; day of week 0-6 from Sunday (7 is Sunday too). As in cron, when both day fields
    are restricted a day matching either is a match."""

    text: str
    sets: tuple[frozenset[int], ...]
    days_restricted: tuple[bool, bool]

    @staticmethod
    def parse(text: str) -> Cron:
        parts = text.split()
        if len(parts) != 5:
            raise InvalidArgument(
                f"cron window {text!r} has {len(parts)} fields; it needs five: minute hour "
                "day-of-month month day-of-week, e.g. '0 2 * * *' (02:00 UTC every day)"
            )
        sets = []
        for part, (name, low, high) in zip(parts, _FIELDS, strict=True):
            sets.append(_field(part, name, low, 7 if name == "day of week" else high, text))
        days = sets[4]
        if 7 in days:
            sets[4] = frozenset((days - {7}) | {0})
        return Cron(text, tuple(sets), (parts[2] != "*", parts[4] != "*"))

    def matches(self, t: float) -> bool:
        """Whether the minute that contains Unix time t is one the expression names (UTC)."""
        tm = time.gmtime(t)
        minute, hour, dom, month, dow = self.sets
        if tm.tm_min not in minute or tm.tm_hour not in hour or tm.tm_mon not in month:
            return False
        weekday = (tm.tm_wday + 1) % 7  # gmtime: Monday 0; cron: Sunday 0
        in_dom, in_dow = tm.tm_mday in dom, weekday in dow
        if all(self.days_restricted):
            return in_dom or in_dow
        return in_dom and in_dow

    def next_opening(self, t: float) -> float | None:
        """The first matching minute at or after t (its start), within HORIZON_S."""
        minute = float(int(t // 60) * 60)
        if minute < t:
            minute += 60
        end = t + HORIZON_S
        while minute <= end:
            if self.matches(minute):
                return minute
            minute += 60
        return None


def _field(part: str, name: str, low: int, high: int, text: str) -> frozenset[int]:
    out: set[int] = set()
    for item in part.split(","):
        base, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                start, stop = low, high
            elif "-" in base:
                a, b = base.split("-", 1)
                start, stop = int(a), int(b)
            else:
                start = stop = int(base)
                if step_text:
                    stop = high
        except ValueError:
            raise InvalidArgument(
                f"cron window {text!r}: {item!r} is not a number, '*', a range a-b or a step */n "
                f"in the {name} field"
            ) from None
        if step < 1 or not low <= start <= stop <= high:
            raise InvalidArgument(
                f"cron window {text!r}: {item!r} is outside the {name} field's {low}-{high} "
                "(or a step below 1)"
            )
        out.update(range(start, stop + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class SyncSpec:
    mode: str = REALTIME
    interval_s: float = 0.0
    window: Cron | None = None
    window_s: float = 0.0
    # Target regions it applies to; empty: every region of the namespace's scope.
    to: tuple[str, ...] = ()

    def applies_to(self, region: str) -> bool:
        return not self.to or region in self.to

    def describe(self) -> str:
        if self.mode == BATCH:
            return f"batch every {self.interval_s:g} s"
        if self.mode == SCHEDULED and self.window is not None:
            return f"scheduled '{self.window.text}' UTC for {self.window_s:g} s"
        return REALTIME


REALTIME_SPEC = SyncSpec()


def parse_sync(raw: Any, where: str, regions: Sequence[str]) -> SyncSpec:
    """The `sync` setting of a namespace; errors name the field and what is allowed."""
    if raw is None or raw == REALTIME:
        return REALTIME_SPEC
    if not isinstance(raw, Mapping):
        raise InvalidArgument(
            f"{where}.sync must be 'realtime' or a mapping such as {{mode: batch, interval_s: 300}}, "
            f"not {raw!r}"
        )
    unknown = sorted(set(raw) - {"mode", "interval_s", "window", "window_s", "to"})
    if unknown:
        raise InvalidArgument(
            f"{where}.sync: unknown fields {unknown}; known: mode, interval_s, window, window_s, to"
        )
    mode = raw.get("mode", REALTIME)
    if mode not in MODES:
        raise InvalidArgument(f"{where}.sync.mode must be one of {', '.join(MODES)}, not {mode!r}")
    to = raw.get("to", [])
    if not isinstance(to, list) or not all(isinstance(r, str) for r in to):
        raise InvalidArgument(f"{where}.sync.to must be a list of region names")
    strange = [r for r in to if r not in regions]
    if strange:
        raise InvalidArgument(
            f"{where}.sync.to names {strange}, not regions of the namespace's scope: {sorted(regions)}"
        )
    if mode == REALTIME:
        return SyncSpec(to=tuple(to))
    if mode == BATCH:
        interval = _seconds(raw.get("interval_s"), f"{where}.sync.interval_s", INTERVAL_S_MAX)
        return SyncSpec(BATCH, interval_s=interval, to=tuple(to))
    window_text = raw.get("window")
    if not isinstance(window_text, str):
        raise InvalidArgument(
            f"{where}.sync.window must be a cron expression (UTC) of when the window opens, e.g. '0 2 * * *'"
        )
    try:
        cron = Cron.parse(window_text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}.sync.window: {exc.message}") from None
    window_s = _seconds(raw.get("window_s"), f"{where}.sync.window_s", WINDOW_S_MAX)
    if window_s < 60:
        raise InvalidArgument(
            f"{where}.sync.window_s must be at least 60 seconds (a window opens for a minute at least)"
        )
    if cron.next_opening(time.time()) is None:
        raise InvalidArgument(
            f"{where}.sync.window {window_text!r} does not open within 8 days; a window must open at "
            "least every 8 days"
        )
    return SyncSpec(SCHEDULED, window=cron, window_s=window_s, to=tuple(to))


def _seconds(value: Any, where: str, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
        raise InvalidArgument(
            f"{where} must be a number of seconds above 0 and at most {high:g}, not {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class LinkCadence:
    """How one link ships: the most eager of its namespaces' modes toward its target."""

    mode: str = REALTIME
    interval_s: float = 0.0
    windows: tuple[tuple[Cron, float], ...] = ()

    def window_open(self, t: float) -> bool:
        """Whether a window is open at t: some opening in the last window_s seconds."""
        for cron, window_s in self.windows:
            minute = float(int(t // 60) * 60)
            while t - minute < window_s:
                if cron.matches(minute):
                    return True
                minute -= 60
        return False

    def next_opening(self, t: float) -> float | None:
        found = [o for cron, _ in self.windows if (o := cron.next_opening(t)) is not None]
        return min(found) if found else None

    def allowance_s(self, t: float) -> float:
        """The lag this mode expects at most: 0 realtime; the interval, batch; for scheduled, the
        gap from the next opening to the one after it, plus the window (a write made just after
        a window closes waits for the next, and is shipped during it)."""
        if self.mode == BATCH:
            return self.interval_s
        if self.mode != SCHEDULED:
            return 0.0
        first = self.next_opening(t)
        if first is None:
            return float(HORIZON_S)
        second = self.next_opening(first + 60)
        longest = max(w for _, w in self.windows)
        return (second - first if second is not None else float(HORIZON_S)) + longest


REALTIME_CADENCE = LinkCadence()


def link_cadence(specs: Sequence[SyncSpec], target_region: str) -> LinkCadence:
    """The cadence of a link that carries namespaces with these sync settings to a node of
    target_region."""
    applying = [s if s.applies_to(target_region) else REALTIME_SPEC for s in specs]
    if not applying or any(s.mode == REALTIME for s in applying):
        return REALTIME_CADENCE
    batches = [s.interval_s for s in applying if s.mode == BATCH]
    if batches:
        return LinkCadence(BATCH, interval_s=min(batches))
    return LinkCadence(
        SCHEDULED, windows=tuple((s.window, s.window_s) for s in applying if s.window is not None)
    )
