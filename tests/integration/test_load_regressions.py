"""Regressions of `domicile load`: a line whose field a request could not carry (an unknown
classification, a malformed request id) stopped the whole load with exit 2 and wrote nothing
more; a value that was not UTF-8 was stored as other bytes and reported loaded; batches cut by
record count alone passed the 4 MiB request bound and the load wrote nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from domicile.cli.main import main
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.limits import STORAGE_REQUEST_BYTES_MAX
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"
NS = "customers_eu"
RECORDS = 1000
VALUE_CHARS = 5000  # far below the 1 MiB value limit; 1,000 of them pass the 4 MiB request bound


@pytest.mark.parametrize(
    "bad",
    [
        {"classification": "bogus"},
        {"request_id": "has a space"},
    ],
    ids=["classification", "request_id"],
)
async def test_a_line_with_a_refused_field_is_reported_and_the_others_are_loaded(
    eu_node: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: dict[str, str]
) -> None:
    lines = [
        json.dumps({"key": "b-1", "value": "one"}),
        json.dumps({"key": "b-2", "value": "two", **bad}),
        json.dumps({"key": "b-3", "value": "three"}),
        json.dumps({"key": "b-4", "value": "four"}),
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    argv = ["load", str(path), "-n", NS, "--batch", "2", "--coordinator", eu_node.coordinator_address]
    code = await asyncio.to_thread(main, [*argv, "--deadline", "10", *eu_node.cli_args()])
    out, err = capsys.readouterr()
    node = eu_node.nodes[REGION]
    written = {k for k in ("b-1", "b-2", "b-3", "b-4") if node.engine.get(NS, k) is not None}
    assert code == 1, f"exit code {code}; stdout: {out!r}; stderr: {err!r}; written: {sorted(written)}"
    assert "line 2:" in err, err
    assert written == {"b-1", "b-3", "b-4"}


async def test_a_value_that_is_not_utf8_is_not_silently_rewritten(
    eu_node: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.jsonl"
    # "café" in Latin-1: the é is the single byte 0xE9.
    path.write_bytes(b'{"key": "lat-1", "value": "caf\xe9"}\n')
    argv = ["load", str(path), "-n", NS, "--coordinator", eu_node.coordinator_address]
    code = await asyncio.to_thread(main, [*argv, "--deadline", "10", *eu_node.cli_args()])
    out, err = capsys.readouterr()
    got = await eu_node.stub(REGION).Get(spb.GetRequest(namespace=NS, key="lat-1"), timeout=5)
    stored = [v.value for v in got.versions]
    # A bad line: reported with its number, nothing written, exit 1.
    assert stored == [], f"the file held b'caf\\xe9' but the store holds {stored!r}; stdout: {out!r}"
    assert code == 1 and "line 1:" in err and "value_base64" in err, (code, out, err)


async def test_load_of_valid_records_that_weigh_more_than_one_request(
    eu_node: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert RECORDS * VALUE_CHARS > STORAGE_REQUEST_BYTES_MAX
    path = tmp_path / "records.jsonl"
    with path.open("w") as f:
        for i in range(RECORDS):
            f.write(json.dumps({"key": f"big-{i:04d}", "value": "x" * VALUE_CHARS}) + "\n")
    argv = ["load", str(path), "-n", NS, "--coordinator", eu_node.coordinator_address]
    code = await asyncio.to_thread(main, [*argv, "--deadline", "20", *eu_node.cli_args()])
    out, err = capsys.readouterr()
    node = eu_node.nodes[REGION]
    written = sum(1 for i in range(RECORDS) if node.engine.get(NS, f"big-{i:04d}") is not None)
    assert code == 0, (
        f"exit code {code}; {written} of {RECORDS} written; stdout: {out!r}; stderr: {err[-400:]!r}"
    )
    assert written == RECORDS
