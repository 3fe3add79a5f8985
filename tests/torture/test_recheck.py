"""A run's report made again from its files (`torture.recheck`), on hand-made run directories: it
passes a good one and fails one whose final state lost an acknowledged write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from torture import recheck
from torture.history import Op, Seen

REGIONS = ["eu-west-1", "eu-central-1"]


def _write(op_id: int, value: str, counter: int, read: Seen | None = None) -> Op:
    f = "rmw" if read is not None else "write"
    return Op(
        op_id,
        "client-0",
        "eu-west-1",
        f,
        "t_siblings",
        "k",
        0.0,
        1.0,
        "ok",
        value,
        read,
        ("eu-west-1", counter),
    )


def _run_dir(root: Path, live: list[Any]) -> Path:
    """A run directory whose replicas all hold `live` ([dot, value, hlc] as final.json has it)."""
    ops = [
        _write(1, "a", 1),
        _write(2, "b", 2, read=Seen(vv={"eu-west-1": 1}, live=[(("eu-west-1", 1), "a", 0)])),
        _write(3, "c", 3),
    ]
    (root / "history.jsonl").write_text("".join(op.to_json() + "\n" for op in ops))
    seen = {"vv": {"eu-west-1": 3}, "dots": [], "live": live}
    final = {
        "regions": REGIONS,
        "siblings_max": {"t_siblings": 16},
        "convergence": {"converged": True, "p50_s": 0.5, "p99_s": 1.5, "divergent": []},
        "state": {"t_siblings": {"k": {region: seen for region in REGIONS}}},
    }
    (root / "final.json").write_text(json.dumps(final))
    faults = [
        {"t": 1.0, "event": "start", "kind": "kill", "detail": "eu-west-1"},
        {"t": 2.0, "event": "heal", "kind": "kill", "detail": "eu-west-1"},
        {"t": 3.0, "event": "start", "kind": "pause", "detail": "eu-central-1"},
        {"t": 4.0, "event": "heal", "kind": "pause", "detail": "eu-central-1"},
        {"t": 5.0, "event": "start", "kind": "kill", "detail": "eu-central-1"},
        {"t": 6.0, "event": "heal", "kind": "all", "detail": "network healed"},
    ]
    (root / "faults.jsonl").write_text("".join(json.dumps(f) + "\n" for f in faults))
    (root / "run.json").write_text(
        json.dumps({"seed": 42, "engine": "sqlite", "duration_s": 6.0, "quiet_s": 5.0, "clients": 1})
    )
    return root


def test_a_good_run_is_reported_as_passing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_dir(tmp_path, [[["eu-west-1", 2], "b", 0], [["eu-west-1", 3], "c", 0]])
    assert recheck.main([str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["seed"] == 42 and report["faults"] == {"kill": 2, "pause": 1}
    assert report["checker"]["acknowledged_writes"] == 3 and report["ok"] is True
    text = (run / "report.md").read_text()
    assert "| kill | 2 |" in text and "| rmw | 1 | 0 | 0 |" in text
    assert "| convergence after the last write, p50 / p99 | 0.50 s / 1.50 s |" in text
    assert "| residency violations (scanner) | not measured |" in text
    assert "Result: **PASS**" in capsys.readouterr().out


def test_negative_control_a_lost_write_fails_the_report(tmp_path: Path) -> None:
    # "c" was acknowledged and nobody read it: a final state without it has lost it.
    run = _run_dir(tmp_path, [[["eu-west-1", 2], "b", 0]])
    out = tmp_path / "again"
    assert recheck.main([str(run), "--out", str(out)]) == 1
    report = json.loads((out / "report.json").read_text())
    assert [x["op"] for x in report["checker"]["lost"]] == [3, 3]
    assert "Result: **FAIL**" in (out / "report.md").read_text()


def test_a_directory_without_a_history_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        recheck.main([str(tmp_path)])
    assert refused.value.code == 2
