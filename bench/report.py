"""Figures of a run: the table on stdout and the same as JSON."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    value: float | None  # None: the node did not export what this figure is computed from
    unit: str
    # What the figure is compared with, measured in the same run; None for baselines.
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""  # human-readable target; empty when the figure is informative only
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}"
    if unit == "ratio":
        # A share of 0.96 is not one of 1.0: 4% of misses among hits set a p99.
        return f"{value:.4f}"
    return f"{value:,.1f} {unit}".rstrip()


def _met(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def table(figures: list[Figure]) -> str:
    header = ("figure", "value", "baseline", "ratio", "target", "met")
    rows = [
        (
            f.label,
            _number(f.value, f.unit),
            "-" if f.baseline is None else f"{_number(f.baseline, f.unit)} ({f.baseline_label})",
            "-" if f.ratio is None else f"{f.ratio:.2f}x",
            f.target or "-",
            _met(f.met),
        )
        for f in figures
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(w) if i in (1, 3) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def write_json(path: Path, figures: list[Figure], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**meta, "figures": {f.key: f.as_json() for f in figures}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)


def cpu_lines(loads: dict[str, dict[str, float]], cpus: int | None) -> str:
    """Cores each process used during each load phase."""
    lines = [f"CPU use during each load, in cores (this machine has {cpus or '?'}):"]
    for phase, cores in loads.items():
        if cores:
            parts = ", ".join(f"{name} {used:.2f}" for name, used in sorted(cores.items()))
            lines.append(f"  {phase}: {parts}; total {sum(cores.values()):.2f}")
    return "\n".join(lines)


def run_printed(prefix: str, run: Callable[[Path], Coroutine[Any, Any, list[Figure]]], seed: int) -> int:
    """Runs a bench of figures alone in a fresh temporary directory (left with its process logs
    when the run fails), then prints the table, and the seed that replays the run."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        found = asyncio.run(run(root))
    except BaseException:
        print(f"benchmark failed; process logs are in {root / 'logs'}", file=sys.stderr)
        raise
    shutil.rmtree(root, ignore_errors=True)
    print(table(found))
    print(f"seed {seed}; {os.cpu_count()} CPUs", file=sys.stderr)
    return 0
