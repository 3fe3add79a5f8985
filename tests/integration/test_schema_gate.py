"""A cluster config whose schema would make stored values invalid is refused when the
coordinator loads it (coordinator/schema_gate.py): it asks the nodes and names the count; an
additive change is rolled out; a node that cannot be asked refuses the change unless the
operator allows it unchecked."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from domicile.errors import FailedPrecondition, Unavailable
from tests.support.cluster import LocalCluster, eventually

REGION = "eu-west-1"
NS = "profiles"
V1: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}},
}
# Additive: a new optional property.
V2_ADDITIVE = {**V1, "properties": {**V1["properties"], "email": {"type": "string"}}}
# Not additive: a new required property, which the stored values lack.
V2_REQUIRES_EMAIL = {**V2_ADDITIVE, "required": ["name", "email"]}


def namespaces(schema_file: Path) -> list[dict[str, Any]]:
    return [{"name": NS, "regions": [REGION], "classification": "internal", "schema": str(schema_file)}]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    schema = tmp_path / "profile.schema.json"
    schema.write_text(json.dumps(V1))
    cluster = LocalCluster(tmp_path, [REGION], namespaces=namespaces(schema))
    await cluster.start_coordinator()
    await cluster.start_node(REGION)
    try:
        # The tests compare the node's revision before and after a roll-out: it must be on the
        # coordinator's topology first, not the one it starts with (found in a full test run:
        # the registration's revision arrived during the refused roll-out).
        await eventually(lambda: adopted(cluster), 10, "the node on the coordinator's topology")
        for i in range(3):
            await cluster.put(REGION, NS, f"p{i}", json.dumps({"name": f"n{i}"}).encode())
        yield cluster
    finally:
        await cluster.stop()


async def adopted(cluster: LocalCluster) -> bool:
    assert cluster.coordinator is not None
    return cluster.nodes[REGION].view.revision == cluster.coordinator.registry.revision


async def roll_out(cluster: LocalCluster, schema: dict[str, Any]) -> None:
    (cluster.root / "profile.schema.json").write_text(json.dumps(schema))
    cluster.write_config(None)
    await cluster.stop_coordinator()
    await cluster.start_coordinator()


async def test_a_schema_that_stored_values_fail_is_refused_at_load_with_the_count(
    cluster: LocalCluster,
) -> None:
    node = cluster.nodes[REGION]
    revision = node.view.revision
    with pytest.raises(FailedPrecondition) as info:
        await roll_out(cluster, V2_REQUIRES_EMAIL)
    message = info.value.message
    assert "would make 3 stored values invalid" in message and f"{NS} at {REGION}: 3" in message
    assert "Nothing of this config was rolled out" in message
    assert (
        node.view.revision == revision
        and json.loads(node.view.topology.cluster.namespaces[0].json_schema) == V1
    )

    # The additive change is rolled out; the next start with the same schemas asks nothing.
    await roll_out(cluster, V2_ADDITIVE)

    async def adopted() -> bool:
        return json.loads(node.view.topology.cluster.namespaces[0].json_schema) == V2_ADDITIVE

    await eventually(adopted, 15.0, "the additive schema at the node")


async def test_a_node_that_cannot_be_asked_refuses_the_change_unless_allowed(cluster: LocalCluster) -> None:
    await cluster.stop_node(REGION)
    with pytest.raises(Unavailable) as info:
        await roll_out(cluster, V2_ADDITIVE)
    assert "could not be asked" in info.value.message and "--allow-unchecked-schemas" in info.value.message
    cluster.coordinator_overrides = {"allow_unchecked_schemas": True}
    await roll_out(cluster, V2_ADDITIVE)
    assert cluster.coordinator is not None
