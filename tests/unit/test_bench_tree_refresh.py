"""bench.tree_refresh runs end to end on a small store and reports every figure of both ways
(the values are the benchmark's: not checked here)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import tree_refresh


async def test_a_small_refresh_reports_both_ways(tmp_path: Path) -> None:
    out = tmp_path / "refresh.json"
    assert await tree_refresh.run(keys=600, runs=1, out=out) == 0
    figures = json.loads(out.read_text())["figures"]
    for way in ("one_go", "paced"):
        for what in ("loop_late_p99_ms", "loop_late_max_ms", "wall_s", "cpu_us_per_key"):
            assert isinstance(figures[f"{way}_{what}"]["value"], float)
    # The paced way is read against the other of the same run.
    assert figures["paced_loop_late_p99_ms"]["baseline"] == figures["one_go_loop_late_p99_ms"]["value"]
