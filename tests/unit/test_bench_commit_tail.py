"""bench/commit_tail.py runs end to end on a tiny load and reports every figure (values are
never asserted: speed is measured by the benchmark, not by tests)."""

from __future__ import annotations

from bench.commit_tail import KINDS, run


def test_the_commit_bench_reports_every_figure_for_both_engines() -> None:
    figures, extra = run(commits=50, pause_ms=0.0, keys=200, value_bytes=100, seed=7)
    values = {figure.key: figure.value for figure in figures}
    for kind in KINDS:
        for figure in ("p50_ms", "p99_ms", "p999_ms", "max_ms"):
            value = values[f"commit_{kind}_{figure}"]
            assert value is not None and value > 0
        assert values[f"commit_{kind}_slow"] is not None
    ratio = next(f for f in figures if f.key == "commit_p99_beside_vs_inside")
    assert ratio.baseline == values["commit_inside_p99_ms"]
    assert set(extra) == {"checkpoints_beside"}
