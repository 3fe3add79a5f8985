"""The run's checks that call a command: one that does not finish in time fails the check and
the run still makes its report (a 30-minute run's audit log outlasted a fixed 60 s timeout, and
the timeout ended the run without a report)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torture.nemesis import REWOUND_EVENT
from torture.run import (
    REWIND_LOSS,
    audit_failures,
    audit_passed,
    lost_to_rewind,
    rewound_regions,
    run_check,
)


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


def verify_json(*kinds: str, anchored: bool = True) -> str:
    problems = [{"kind": kind, "seq": 7, "message": f"entry 7 {kind}"} for kind in kinds]
    report = {"anchored": anchored, "head": {"size": 9}, "problems": problems, "problems_omitted": 0}
    return json.dumps(report) + "\naudit log of eu-west-1: 100000 entries read"


def test_a_rewound_region_that_lost_anchored_entries_is_told_apart_from_a_broken_chain() -> None:
    # A node put back on an older copy lost the entries written since: its log is truncated or
    # its later entries replace them (coordinator/audit_heads.py keeps the head that proves it).
    for kinds in (("truncated",), ("rewritten",)):
        lost = lost_to_rewind(verify_json(*kinds))
        assert lost is not None and lost.startswith(REWIND_LOSS) and "covers 9 entries" in lost
    # Negative controls: a modified entry, an unanchored log or output that is not the report
    # are failures like in any region.
    assert lost_to_rewind(verify_json("rewritten", "modified")) is None
    assert lost_to_rewind(verify_json("truncated", anchored=False)) is None
    assert lost_to_rewind(verify_json()) is None
    assert lost_to_rewind("result:           FAILED") is None


def test_only_a_rewound_region_may_pass_with_lost_entries() -> None:
    lost = f"{REWIND_LOSS}: the head on record covers 9 entries"
    assert audit_passed({"eu-west-1": "ok", "us-east-1": lost}, frozenset({"us-east-1"}))
    assert not audit_passed({"eu-west-1": "ok", "us-east-1": lost}, frozenset({"eu-west-1"}))
    assert not audit_passed({"us-east-1": "result: FAILED"}, frozenset({"us-east-1"}))
    text = "\n".join(audit_failures({"us-east-1": lost}))
    assert "put back on an older copy" in text and "failed" not in text


def test_the_rewound_regions_are_read_from_the_faults_log(tmp_path: Path) -> None:
    log = tmp_path / "faults.jsonl"
    entries = [
        {"t": 1.0, "event": "start", "kind": "rewind", "detail": "eu-west-1 restarts from a copy"},
        {"t": 2.0, "event": REWOUND_EVENT, "kind": "rewind", "detail": "eu-west-1"},
        {"t": 3.0, "event": "heal", "kind": "rewind", "detail": "eu-west-1 restarts from a copy"},
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert rewound_regions(log) == {"eu-west-1"}
    assert rewound_regions(tmp_path / "absent.jsonl") == frozenset()
