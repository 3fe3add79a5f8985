"""Short torture runs in CI: one under every fault kind the cluster must survive, which must
pass, and the negative control, which restarts a node from an old copy of its store with the
check that catches that turned off, and must fail. `make torture` runs longer; README "Torture
runs" says how to replay a seed."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from torture import recheck
from torture.history import load

REPO = Path(__file__).resolve().parents[2]
SHORT_RUN_S = "20"
RUN_TIMEOUT_S = 300
# The negative control does not converge (that is the point): do not wait long for it.
QUICK_CHECKS = ("--convergence-timeout", "10", "--audit-timeout", "5")


def _seed() -> int:
    seed = int(os.environ.get("DOMICILE_SEED") or random.SystemRandom().randrange(2**31))
    print(f"DOMICILE_SEED={seed}")
    return seed


def _run(out: Path, seed: int, *extra: str) -> tuple[int, dict[str, object], str]:
    argv = [sys.executable, "-m", "torture.run", "--seed", str(seed), "--out", str(out), *extra]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return done.returncode, report, done.stdout + done.stderr[-3000:]


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_a_short_run_under_every_fault_loses_nothing(tmp_path: Path) -> None:
    seed = _seed()
    code, report, output = _run(tmp_path, seed, "--duration", SHORT_RUN_S)
    print(output)
    assert code == 0, f"torture run failed (replay with DOMICILE_SEED={seed}):\n{output}"
    assert report["ok"] is True
    checker = report["checker"]
    assert isinstance(checker, dict) and checker["acknowledged_writes"] > 0
    # Subject writes carry the context they read: written blind, they piled up siblings on the
    # few subject keys until the cap refused every one (after about 50 s of a 30-minute run).
    subject_writes = [op for op in load(tmp_path / "history.jsonl") if op.f == "subject-write"]
    assert subject_writes and all(op.read is not None for op in subject_writes if op.outcome == "ok")
    # The report made again from the run's files says the same.
    assert recheck.main([str(tmp_path), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["checker"] == checker and again["faults"] == report["faults"]
    assert again["outcomes"] == report["outcomes"] and again["convergence"] == report["convergence"]


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_negative_control_a_node_restored_from_an_old_copy_is_caught(tmp_path: Path) -> None:
    # Without the rewind check a node put back on an old copy hands out dots again; the checker
    # must see the dots reused and writes lost. A checker that passed this would prove nothing.
    seed = _seed()
    code, report, output = _run(
        tmp_path, seed, "--duration", "10", "--faults", "rewind-unchecked", *QUICK_CHECKS
    )
    print(output)
    assert code == 1, f"the checker missed a rewound node (DOMICILE_SEED={seed}):\n{output}"
    checker = report["checker"]
    assert isinstance(checker, dict)
    assert checker["dot_reuse"] and checker["lost"], checker
