"""The quality figures (validated, quality_score) are said to describe accepted values, but the
node updates them in _check_schema, before the rest of the Put's checks: a write the residency
scope (or any later check) refuses is counted as validated and pulls the quality score, though
nothing was written."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster

SCHEMA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
REGION = "eu-west-1"
NS = "profiles"


async def test_a_refused_write_does_not_count_in_the_quality_figures(tmp_path: Path):
    schema = tmp_path / "profile.schema.json"
    schema.write_text(json.dumps(SCHEMA))
    namespaces = [
        {
            "name": NS,
            "regions": [REGION],
            "classification": "personal",
            "schema": str(schema),
            "quality_fields": ["email", "phone"],
        }
    ]
    cluster = LocalCluster(tmp_path, [REGION], namespaces=namespaces)
    await cluster.start_coordinator()
    await cluster.start_node(REGION)
    try:
        full = b'{"name": "Ada", "email": "a@example.com", "phone": "+1 555 0100"}'
        await cluster.put(REGION, NS, "a", full)
        # Refused after the schema check: a bad request id, then a looser classification.
        for fields in ({"request_id": "not allowed!"}, {"classification": 1}):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await cluster.put(REGION, NS, "b", b'{"name": "Bob"}', **fields)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert await cluster.values(REGION, NS, "b") == set(), "nothing was written"

        status = await cluster.stub(REGION).GetNodeStatus(spb.GetNodeStatusRequest(), timeout=5)
        quality = {q.namespace: q for q in status.namespace_quality}[NS]
        # One value was accepted, carrying both quality fields.
        assert (quality.validated, quality.quality_score) == (1, pytest.approx(1.0))
    finally:
        await cluster.stop()
