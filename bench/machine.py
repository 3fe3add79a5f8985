"""What the machine took from a measurement: the share of CPU time the hypervisor gave to other
guests (steal, /proc/stat), the share of all CPUs' time spent busy, and the share of wall time
in which some task here was runnable but waited for a CPU (pressure, /proc/pressure/cpu
"some"). Steal is the other guests' alone; busy and pressure include this run's own processes
competing for the CPUs (on 2 cores, a client and two servers in turn wait for each other), so
they are read against the same figure of a quiet round, not as the machine's. Linux only; a
figure the kernel does not offer is None.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
PROC_PRESSURE_CPU = Path("/proc/pressure/cpu")
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal (guest time is in user).
IDLE, IOWAIT, STEAL = 3, 4, 7
FIELDS = 8


@dataclass(frozen=True)
class Sample:
    at: float
    jiffies: tuple[int, ...] | None
    pressure_us: int | None


@dataclass(frozen=True)
class Share:
    """Between two samples: steal and busy as shares of all CPUs' time, pressure of wall time."""

    steal: float | None
    busy: float | None
    pressure: float | None

    def line(self) -> str:
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        return (
            f"CPU busy {pct(self.busy)}, stolen by the hypervisor {pct(self.steal)}, "
            f"some task waiting for a CPU {pct(self.pressure)} of the time"
        )

    def as_dict(self) -> dict[str, float | None]:
        return {"steal": self.steal, "busy": self.busy, "pressure": self.pressure}


def sample() -> Sample:
    return Sample(time.monotonic(), _jiffies(), _pressure_us())


def between(a: Sample, b: Sample) -> Share:
    return total([(a, b)])


def total(shares: list[tuple[Sample, Sample]]) -> Share:
    """Several windows as one: each figure summed over the windows (a short window weighs by its
    length, not as much as a long one)."""
    jiffies = [(a.jiffies, b.jiffies) for a, b in shares if a.jiffies is not None and b.jiffies is not None]
    pressure = [(a, b) for a, b in shares if a.pressure_us is not None and b.pressure_us is not None]
    steal = busy = pressed = None
    if jiffies:
        d = [sum(y[i] - x[i] for x, y in jiffies) for i in range(FIELDS)]
        if sum(d) > 0:
            steal = d[STEAL] / sum(d)
            busy = (sum(d) - d[IDLE] - d[IOWAIT] - d[STEAL]) / sum(d)
    wall_us = sum((b.at - a.at) for a, b in pressure) * 1e6
    if pressure and wall_us > 0:
        waited = sum(int(b.pressure_us or 0) - int(a.pressure_us or 0) for a, b in pressure)
        pressed = min(1.0, waited / wall_us)
    return Share(steal, busy, pressed)


def _jiffies() -> tuple[int, ...] | None:
    try:
        first = PROC_STAT.read_text().splitlines()[0].split()
        if len(first) < FIELDS + 1 or first[0] != "cpu":
            return None
        return tuple(int(x) for x in first[1 : FIELDS + 1])
    except (OSError, IndexError, ValueError):
        return None


def _pressure_us() -> int | None:
    try:
        some = PROC_PRESSURE_CPU.read_text().splitlines()[0]
        totals = [int(part.removeprefix("total=")) for part in some.split() if part.startswith("total=")]
    except (OSError, IndexError, ValueError):
        return None
    return totals[0] if totals else None
