"""Regression: `domicile load` cuts the file into batches by record count only (--batch, default 1,000). A
batch of ordinary records whose values are a few KiB each weighs more than the node's storage
request bound (STORAGE_REQUEST_BYTES_MAX, 4 MiB): the node refuses the whole PutBatch with
RESOURCE_EXHAUSTED, the SDK retries that same refusal, and the command stops with exit 2 having
written none of those valid records. domicile/wire/limits.py says the SDK and CLI keep a PutBatch
under the request bound ("its request also stays under STORAGE_REQUEST_BYTES_MAX")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.cli.main import main
from domicile.wire.limits import STORAGE_REQUEST_BYTES_MAX
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"
NS = "customers_eu"
RECORDS = 1000
VALUE_CHARS = 5000  # far below the 1 MiB value limit; 1,000 of them pass the 4 MiB request bound


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, [REGION])
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def test_load_of_valid_records_that_weigh_more_than_one_request(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert RECORDS * VALUE_CHARS > STORAGE_REQUEST_BYTES_MAX
    path = tmp_path / "records.jsonl"
    with path.open("w") as f:
        for i in range(RECORDS):
            f.write(json.dumps({"key": f"big-{i:04d}", "value": "x" * VALUE_CHARS}) + "\n")
    argv = ["load", str(path), "-n", NS, "--coordinator", cluster.coordinator_address]
    code = await asyncio.to_thread(main, [*argv, "--deadline", "20", *cluster.cli_args()])
    out, err = capsys.readouterr()
    node = cluster.nodes[REGION]
    written = sum(1 for i in range(RECORDS) if node.engine.get(NS, f"big-{i:04d}") is not None)
    assert code == 0, (
        f"exit code {code}; {written} of {RECORDS} written; stdout: {out!r}; stderr: {err[-400:]!r}"
    )
    assert written == RECORDS
