"""The run's checks that call a command: one that does not finish in time fails the check and
the run still makes its report (a 30-minute run's audit log outlasted a fixed 60 s timeout, and
the timeout ended the run without a report)."""

from __future__ import annotations

import sys

from torture.run import run_check


def test_a_check_that_outlasts_its_timeout_is_a_failed_check_not_a_crash() -> None:
    code, output = run_check([sys.executable, "-c", "import time; time.sleep(30)", "x"], 0.5)
    assert code is None
    assert "did not finish within 0.5 s" in output


def test_a_check_that_finishes_gives_its_code_and_output() -> None:
    code, output = run_check([sys.executable, "-c", "print('chain broken'); raise SystemExit(3)"], 30.0)
    assert code == 3 and output == "chain broken"
