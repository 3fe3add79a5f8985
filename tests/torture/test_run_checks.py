"""The run's checks that call a command: one that does not finish in time fails the check and
the run still makes its report (a 30-minute run's audit log outlasted a fixed 60 s timeout, and
the timeout ended the run without a report)."""

from __future__ import annotations

import sys

from torture.run import audit_failures, run_check


def test_a_check_that_outlasts_its_timeout_is_a_failed_check_not_a_crash() -> None:
    code, output = run_check([sys.executable, "-c", "import time; time.sleep(30)", "x"], 0.5)
    assert code is None
    assert "did not finish within 0.5 s" in output


def test_a_check_that_finishes_gives_its_code_and_output() -> None:
    code, output = run_check([sys.executable, "-c", "print('chain broken'); raise SystemExit(3)"], 30.0)
    assert code == 3 and output == "chain broken"


def test_a_failed_audit_check_is_quoted_in_the_report() -> None:
    lines = audit_failures({"eu-west-1": "ok", "us-east-1": "result:           not anchored"})
    text = "\n".join(lines)
    assert "Audit check of us-east-1 failed" in text and "not anchored" in text
    assert "eu-west-1" not in text
    assert audit_failures({"eu-west-1": "ok"}) == [] and audit_failures(None) == []
