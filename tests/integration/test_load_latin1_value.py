"""Regression: `domicile load` reads the file with errors="surrogateescape" and encodes "value" with
"surrogatepass": a byte that is not UTF-8 inside a "value" string (a Latin-1 file) becomes a
lone surrogate and is then written as three other bytes. The record is stored with a value that
is neither the file's bytes nor valid UTF-8, and the command reports success (exit 0).

Either outcome of a fix is accepted: the line refused as a bad line (exit 1, line number on
stderr, nothing written), or the file's bytes written as they are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.cli.main import main
from domicile.v1 import storage_node_pb2 as spb
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


async def test_a_value_that_is_not_utf8_is_not_silently_rewritten(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.jsonl"
    # "café" in Latin-1: the é is the single byte 0xE9.
    path.write_bytes(b'{"key": "lat-1", "value": "caf\xe9"}\n')
    argv = ["load", str(path), "-n", NS, "--coordinator", cluster.coordinator_address]
    code = await asyncio.to_thread(main, [*argv, "--deadline", "10", *cluster.cli_args()])
    out, err = capsys.readouterr()
    got = await cluster.stub(REGION).Get(spb.GetRequest(namespace=NS, key="lat-1"), timeout=5)
    stored = [v.value for v in got.versions]
    if stored:
        assert stored == [b"caf\xe9"], (
            f"exit code {code}; the file held b'caf\\xe9' but the store holds {stored!r}; stdout: {out!r}"
        )
    else:
        assert code == 1 and "line 1:" in err, (code, out, err)
