"""Quality gates on a running cluster: a namespace's JSON Schema travels with the topology, a
write that fails it is refused with INVALID_ARGUMENT naming the JSON path and the rule and
nothing is written; the node reports its figures (validated, refused by rule, quality score)
and, asked for them, its record counts per namespace and classification and how many stored
values a candidate schema would make invalid."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml

from domicile.cli.main import main
from domicile.model import Classification
from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "address": {"type": "object", "properties": {"zip": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
REGION = "eu-west-1"
NS = "profiles"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    schema = tmp_path / "profile.schema.json"
    schema.write_text(json.dumps(SCHEMA))
    namespaces = [
        {
            "name": NS,
            "regions": [REGION],
            "classification": "internal",
            "schema": str(schema),
            "quality_fields": ["email", "phone"],
        },
        {"name": "free", "regions": [REGION]},
    ]
    cluster = LocalCluster(tmp_path, [REGION], namespaces=namespaces)
    await cluster.start_coordinator()
    await cluster.start_node(REGION)
    try:
        yield cluster
    finally:
        await cluster.stop()


async def refused(cluster: LocalCluster, key: str, value: bytes, **fields: object) -> str:
    before = await cluster.values(REGION, NS, key)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cluster.put(REGION, NS, key, value, **fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert (await cluster.values(REGION, NS, key)) == before, "the stored data is left as it was"
    return str(info.value.details())


async def test_a_value_that_fails_the_schema_is_refused_naming_path_and_rule(cluster: LocalCluster):
    await cluster.put(REGION, NS, "p1", b'{"name": "Ada", "email": "ada@example.com"}')
    assert await cluster.values(REGION, NS, "p1") == {b'{"name": "Ada", "email": "ada@example.com"}'}
    message = await refused(cluster, "p2", b'{"email": "x@example.com"}')
    assert await cluster.values(REGION, NS, "p2") == set()
    assert "at $, rule 'required'" in message and "'name' is a required property" in message
    message = await refused(cluster, "p3", b'{"name": "B", "address": {"zip": 75001}}')
    assert "at $.address.zip, rule 'type'" in message
    message = await refused(cluster, "p4", b'{"name": "C", "tags": ["a", 7]}')
    assert "at $.tags[1], rule 'type'" in message
    message = await refused(cluster, "p5", b"not json")
    assert "rule 'json'" in message
    message = await refused(cluster, "p6", b'{"name": "D"}', content_type="text/plain")
    assert "rule 'content_type'" in message
    # an existing record is left exactly as it was by a refused overwrite
    await refused(cluster, "p1", b'{"name": ""}')
    assert await cluster.values(REGION, NS, "p1") == {b'{"name": "Ada", "email": "ada@example.com"}'}
    # a namespace without a schema takes any value
    await cluster.put(REGION, "free", "k", b"not json")


async def test_the_node_reports_quality_figures_and_counts(cluster: LocalCluster):
    await cluster.put(REGION, NS, "a", b'{"name": "A", "email": "a@example.com", "phone": "+1 555 0100"}')
    await cluster.put(REGION, NS, "b", b'{"name": "B", "email": "b@example.com"}')
    await cluster.put(REGION, NS, "c", b'{"name": "C"}', classification=int(Classification.PERSONAL))
    await refused(cluster, "d", b"{}")
    await refused(cluster, "e", b'{"name": 5}')
    await refused(cluster, "f", b'{"name": 6}')
    await cluster.put(REGION, "free", "k", b"v")

    status = await cluster.stub(REGION).GetNodeStatus(spb.GetNodeStatusRequest(), timeout=5)
    quality = {q.namespace: q for q in status.namespace_quality}
    assert set(quality) == {NS}
    assert quality[NS].validated == 3
    assert dict(quality[NS].refused_by_rule) == {"required": 1, "type": 2}
    assert quality[NS].quality_score == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert list(status.namespace_stats) == [], "counted only when asked for"

    # A candidate that would require email: stored values without it would become invalid.
    stricter = {**SCHEMA, "required": ["name", "email"]}
    additive = {**SCHEMA, "properties": {**SCHEMA["properties"], "nickname": {"type": "string"}}}
    for candidate, invalid in ((stricter, 1), (additive, 0)):
        status = await cluster.stub(REGION).GetNodeStatus(
            spb.GetNodeStatusRequest(candidate_schemas={NS: json.dumps(candidate)}), timeout=10
        )
        counts = {
            (s.namespace, s.classification): (s.records, s.candidate_invalid) for s in status.namespace_stats
        }
        assert counts == {
            (NS, int(Classification.INTERNAL)): (2, 0),
            (NS, int(Classification.PERSONAL)): (1, invalid),
            ("free", int(Classification.INTERNAL)): (1, 0),
        }

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cluster.stub(REGION).GetNodeStatus(
            spb.GetNodeStatusRequest(candidate_schemas={NS: '{"type": 12}'}), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidate schema of namespace profiles" in str(info.value.details())


def cli(cluster: LocalCluster, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(
        [*argv, "--coordinator", cluster.coordinator_address, "--deadline", "10", *cluster.cli_args()]
    )
    out, err = capsys.readouterr()
    return code, out, err


async def test_check_schemas_counts_what_a_new_schema_would_invalidate(
    cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    await cluster.put(REGION, NS, "a", b'{"name": "A", "email": "a@example.com"}')
    await cluster.put(REGION, NS, "b", b'{"name": "B"}')
    await cluster.put(REGION, NS, "c", b'{"name": "C"}')
    config = yaml.safe_load(cluster.config_path.read_text())
    stricter = tmp_path / "stricter.json"
    stricter.write_text(json.dumps({**SCHEMA, "required": ["name", "email"]}))
    next(n for n in config["namespaces"] if n["name"] == NS)["schema"] = str(stricter)
    new_config = tmp_path / "new-cluster.yaml"
    new_config.write_text(yaml.safe_dump(config))

    code, out, _ = await asyncio.to_thread(
        cli, cluster, capsys, "catalog", "check-schemas", "--cluster-config", str(new_config), "--json"
    )
    # the other regions of the topology have no node: reported, and the answer is incomplete
    assert code == 2 and json.loads(out)["regions_failed"] == ["us-east-1", "eu-central-1", "ap-northeast-1"]
    code, out, _ = await asyncio.to_thread(
        cli, cluster, capsys, "catalog", "check-schemas", "--cluster-config", str(new_config), "--json",
        "--region", REGION,
    )  # fmt: skip
    doc = json.loads(out)["namespaces"][NS]
    assert code == 1 and doc["invalid"] == {REGION: 2} and doc["invalid_total"] == 2
    assert doc["not_additive"] == ["requires 'email', which the schema in force does not"]
    # the config in force is its own additive change: nothing invalid
    code, out, _ = await asyncio.to_thread(
        cli, cluster, capsys, "catalog", "check-schemas", "--cluster-config", str(cluster.config_path),
        "--region", REGION,
    )  # fmt: skip
    assert code == 0 and f"{NS}: 0 stored values would be invalid (as in force)" in out

    await refused(cluster, "d", b"{}")
    code, out, _ = await asyncio.to_thread(
        cli,
        cluster,
        capsys,
        "catalog",
        "show",
        NS,
        "--counts",
        "--cluster-config",
        str(cluster.config_path),
        "--json",
    )
    counts = json.loads(out)["counts"][REGION]
    assert code == 0
    assert counts["records"] == {"internal": 3} and counts["validated"] == 3
    assert counts["refused_by_rule"] == {"required": 1}
    assert counts["quality_score"] == pytest.approx(1 / 6)
