"""bench/commit_tail.py runs end to end on a tiny load and reports every figure (values are
never asserted: speed is measured by the benchmark, not by tests)."""

from __future__ import annotations

import pytest

from bench.commit_tail import KINDS, main, run


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--commits", "0"], "--commits is 0; it must be at least 1"),
        (["--pause-ms", "-1"], "--pause-ms is -1.0; it must be at least 0"),
        (["--keys", "0"], "--keys is 0; it must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_store_is_made(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
