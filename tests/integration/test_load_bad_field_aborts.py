"""Regression: `domicile load`: a line whose field the SDK refuses (an unknown classification, a malformed
request id, an over-long key) must be reported with its line number and skipped, as the command
promises for bad lines; the other lines must still be written and the exit code must be 1.

On the current code such a line makes the SDK raise InvalidArgument while building the whole
PutBatch request, so the command stops with exit 2 and "error: ...", naming no line, and the
good records of that batch and of every later batch are never written."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.cli.main import main
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"
NS = "customers_eu"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, [REGION])
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.mark.parametrize(
    "bad",
    [
        {"classification": "bogus"},
        {"request_id": "has a space"},
    ],
    ids=["classification", "request_id"],
)
async def test_a_line_with_a_refused_field_is_reported_and_the_others_are_loaded(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: dict[str, str]
) -> None:
    lines = [
        json.dumps({"key": "b-1", "value": "one"}),
        json.dumps({"key": "b-2", "value": "two", **bad}),
        json.dumps({"key": "b-3", "value": "three"}),
        json.dumps({"key": "b-4", "value": "four"}),
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    argv = ["load", str(path), "-n", NS, "--batch", "2", "--coordinator", cluster.coordinator_address]
    code = await asyncio.to_thread(main, [*argv, "--deadline", "10", *cluster.cli_args()])
    out, err = capsys.readouterr()
    node = cluster.nodes[REGION]
    written = {k for k in ("b-1", "b-2", "b-3", "b-4") if node.engine.get(NS, k) is not None}
    assert code == 1, f"exit code {code}; stdout: {out!r}; stderr: {err!r}; written: {sorted(written)}"
    assert "line 2:" in err, err
    assert written == {"b-1", "b-3", "b-4"}
