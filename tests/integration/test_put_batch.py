"""PutBatch: each record checked, decided and audited as a Put of its own, the accepted ones
committed in one group, one result per record; the SDK's put_batch and `domicile load`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.audit import AuditEntry
from domicile.cli.main import main
from domicile.client import BatchRecord
from domicile.errors import InvalidArgument, PlacementRefused
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.limits import PUT_BATCH_RECORDS_MAX
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


async def put_entries(cluster: LocalCluster) -> dict[str, AuditEntry]:
    node = cluster.nodes[REGION]
    await node.audit.flush()
    found = (AuditEntry.decode(e.body) for e in node.audit.iter_all())
    return {e.key: e for e in found if e.action == "put"}


async def test_a_batch_writes_its_good_records_and_answers_each_bad_one_alone(cluster: LocalCluster) -> None:
    node = cluster.nodes[REGION]
    lsn_before = node.engine.last_lsn()
    batches_before = node.committer.batches_committed
    puts = [spb.PutRequest(namespace=NS, key=f"b-{i}", value=f"v{i}".encode()) for i in range(200)]
    bad = {
        3: (
            spb.PutRequest(namespace=NS, key="", value=b"v"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "key is empty",
        ),
        50: (
            spb.PutRequest(namespace=NS, key="big", value=b"x" * (1024 * 1024 + 1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit is 1048576 bytes",
        ),
        77: (
            spb.PutRequest(namespace=NS, key="cls", value=b"v", classification=42),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown classification",
        ),
        120: (
            spb.PutRequest(namespace="customers_jp", key="jp", value=b"v"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "may not hold",
        ),
        150: (
            spb.PutRequest(namespace="nope", key="n", value=b"v"),
            grpc.StatusCode.PERMISSION_DENIED,
            "may not call storage.Put on namespace 'nope'",
        ),
    }
    for i, (request, _, _) in bad.items():
        puts[i] = request
    response = await cluster.stub(REGION).PutBatch(spb.PutBatchRequest(puts=puts), timeout=30)

    assert len(response.results) == len(puts)
    for i, result in enumerate(response.results):
        if i in bad:
            _, code, message = bad[i]
            assert (result.code, message in result.message) == (code.value[0], True), (i, result)
            assert not result.HasField("put")
        else:
            assert result.code == 0 and result.message == "", (i, result)
            assert result.put.region == REGION and result.put.lsn > lsn_before and result.put.context_token
    assert list(response.results[120].allowed_regions) == ["ap-northeast-1"]
    good = len(puts) - len(bad)
    assert node.engine.last_lsn() == lsn_before + good
    # One group commit took every accepted record.
    assert node.committer.batches_committed == batches_before + 1
    got = await cluster.stub(REGION).Get(spb.GetRequest(namespace=NS, key="b-199"), timeout=5)
    assert [v.value for v in got.versions] == [b"v199"]
    for key in ("big", "cls", "jp"):
        gone = await cluster.stub(REGION).Get(spb.GetRequest(namespace=NS, key=key), timeout=5)
        assert not gone.found
    # Audited per record, like a Put: every written record has its allowed put entry.
    entries = await put_entries(cluster)
    written = [p.key for i, p in enumerate(puts) if i not in bad]
    assert all(entries[k].decision == "allow" for k in written)
    assert entries["jp"].decision == "refuse"


@pytest.mark.parametrize("count", [0, PUT_BATCH_RECORDS_MAX + 1])
async def test_an_empty_or_oversized_batch_is_refused_whole(cluster: LocalCluster, count: int) -> None:
    node = cluster.nodes[REGION]
    before = (node.engine.last_lsn(), node.engine.counts())
    puts = [spb.PutRequest(namespace=NS, key=f"o-{i}", value=b"v") for i in range(count)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cluster.stub(REGION).PutBatch(spb.PutBatchRequest(puts=puts), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"it takes 1 to {PUT_BATCH_RECORDS_MAX}" in str(info.value.details())
    assert (node.engine.last_lsn(), node.engine.counts()) == before


async def test_the_sdk_answers_per_record_and_a_resent_batch_is_written_once(cluster: LocalCluster) -> None:
    records = [BatchRecord(f"s-{i}", b"v", request_id=f"req-{i}") for i in range(10)]
    records.append(BatchRecord("s-bad", b"v", subject_jurisdiction="not a code", request_id="req-bad"))
    async with cluster.async_client() as client:
        first = await client.put_batch(NS, records)
        again = await client.put_batch(NS, records)
        with pytest.raises(InvalidArgument, match="put_batch takes 1 to"):
            await client.put_batch(NS, [])
    assert isinstance(first[-1], InvalidArgument) and isinstance(again[-1], InvalidArgument)
    for a, b in zip(first[:-1], again[:-1], strict=True):
        assert not isinstance(a, Exception) and not isinstance(b, Exception)
        assert a.version.dot == b.version.dot  # the retry was answered with the first write
    node = cluster.nodes[REGION]
    assert sum(1 for k in (f"s-{i}" for i in range(10)) if node.engine.get(NS, k) is not None) == 10


async def test_the_sdk_reports_a_placement_refusal_with_its_regions(cluster: LocalCluster) -> None:
    async with cluster.async_client() as client:
        [result] = await client.put_batch("customers_jp", [BatchRecord("jp-1", b"v")], region=REGION)
    assert isinstance(result, PlacementRefused)
    assert result.allowed_regions == ("ap-northeast-1",)


async def test_load_writes_good_lines_and_reports_bad_ones_by_number(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        json.dumps({"key": "l-1", "value": "one"}),
        "{not json",
        json.dumps({"key": "l-2", "value_base64": "dHdv"}),
        json.dumps({"value": "no key"}),
        "",
        json.dumps({"key": "l-3", "value": "three", "subject_jurisdiction": "nowhere"}),
        json.dumps({"key": "l-4", "value": "four", "colour": "red"}),
        json.dumps({"key": "l-5", "value": "five", "subject_id": "c-5", "subject_jurisdiction": "DE"}),
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    argv = ["load", str(path), "-n", NS, "--batch", "2", "--coordinator", cluster.coordinator_address]
    code = await asyncio.to_thread(main, [*argv, "--deadline", "10", *cluster.cli_args()])
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert "loaded 3 records" in out and "1 refused, 3 bad lines" in out
    assert "line 2: bad line: not JSON" in err
    assert 'line 4: bad line: "key" must be a non-empty string' in err
    assert "line 6: refused:" in err and "jurisdiction" in err
    assert "line 7: bad line: unknown fields ['colour']" in err
    node = cluster.nodes[REGION]
    for key in ("l-1", "l-2", "l-5"):
        assert node.engine.get(NS, key) is not None, key
    assert node.engine.get(NS, "l-3") is None
    got = await cluster.stub(REGION).Get(spb.GetRequest(namespace=NS, key="l-2"), timeout=5)
    assert [v.value for v in got.versions] == [b"two"]


async def test_load_of_a_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(main, ["load", str(tmp_path / "none.jsonl"), "-n", NS, "--insecure"])
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


async def test_records_about_a_subject_are_sealed_at_rest_and_read_back(cluster: LocalCluster) -> None:
    puts = [
        spb.PutRequest(
            namespace=NS,
            key=f"p-{i}",
            value=f"secret {i}".encode(),
            subject_id=f"c-{i % 3}",
            subject_jurisdiction="DE",
        )
        for i in range(6)
    ]
    puts.append(spb.PutRequest(namespace=NS, key="p-plain", value=b"plain"))
    response = await cluster.stub(REGION).PutBatch(spb.PutBatchRequest(puts=puts), timeout=30)
    assert [r.code for r in response.results] == [0] * len(puts)
    node = cluster.nodes[REGION]
    for i in range(6):
        state = node.engine.get(NS, f"p-{i}")
        assert state is not None and state.versions[0].value != f"secret {i}".encode()  # sealed
        got = await cluster.stub(REGION).Get(spb.GetRequest(namespace=NS, key=f"p-{i}"), timeout=5)
        assert [v.value for v in got.versions] == [f"secret {i}".encode()]
    plain = node.engine.get(NS, "p-plain")
    assert plain is not None and plain.versions[0].value == b"plain"
