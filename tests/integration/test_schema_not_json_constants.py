"""The quality gate parses values with Python's json.loads, which accepts the non-JSON tokens
NaN, Infinity and -Infinity. A value carrying NaN is not JSON (RFC 8259), and NaN compares
false with every bound, so it passes minimum/maximum: the gate stores a value that is neither
JSON nor within the schema's range."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from tests.support.cluster import LocalCluster

SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "number", "minimum": 0, "maximum": 150},
    },
}
REGION = "eu-west-1"
NS = "profiles"


async def test_a_value_with_nan_is_refused(tmp_path: Path):
    schema = tmp_path / "profile.schema.json"
    schema.write_text(json.dumps(SCHEMA))
    cluster = LocalCluster(
        tmp_path, [REGION], namespaces=[{"name": NS, "regions": [REGION], "schema": str(schema)}]
    )
    await cluster.start_coordinator()
    await cluster.start_node(REGION)
    try:
        # The gate itself refuses an out-of-range age:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cluster.put(REGION, NS, "k0", b'{"name": "Ada", "age": 200}')
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # ... but not NaN, which is not JSON at all.
        value = b'{"name": "Ada", "age": NaN}'
        try:
            await cluster.put(REGION, NS, "k1", value)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
        stored = await cluster.values(REGION, NS, "k1")
        assert stored == set(), f"stored a value that is not JSON: {stored}"
    finally:
        await cluster.stop()
