"""Regression: `domicile catalog ropa --law ccpa` on the shipped sample config crashes: ropa._transfers picks
the law's representative subject among its country codes only, and CCPA's subjects are a
subdivision (US-CA), so the list is empty and [0] raises IndexError (catalog.py's own
_representative_subject falls back to the subdivision)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domicile.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "cluster.yaml"


def test_ropa_for_a_law_whose_subjects_are_a_subdivision(capsys: pytest.CaptureFixture[str]):
    code = main(["catalog", "ropa", "--cluster-config", str(SAMPLE), "--law", "ccpa", "--format", "json"])
    out, _ = capsys.readouterr()
    assert code == 0
    record = json.loads(out)
    assert record["law"] == "ccpa" and record["activities"]
