"""Regression: Valid Draft 2020-12 schemas that jsonschema applies correctly are refused at load by the new
`$ref` check (domicile/quality.py _check_refs), so a cluster config that loaded before no longer
loads (every node and the coordinator refuse it).

- The JSON Schema project's own bundling example (understanding-json-schema, "Structuring a
  complex schema", bundling): a root `$id`, and an embedded schema with a relative `$id`
  ("/schemas/address") that the root refers to by it. _check_refs never applies the root's
  `$id` as the base URI (`root=True` skips it), so "/schemas/address" is looked up against "".
- A relative reference to the document itself by its `$id` ("root.json#/$defs/a").
- A "$ref" text inside an unknown keyword (an annotation such as OpenAPI's `example` or an
  `x-` extension): its value is data the validator ignores, not a reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from domicile.cluster import parse_cluster

BUNDLED = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://example.com/schemas/customer",
    "type": "object",
    "properties": {
        "first_name": {"type": "string"},
        "shipping_address": {"$ref": "/schemas/address"},
    },
    "required": ["first_name", "shipping_address"],
    "$defs": {
        "address": {
            "$id": "/schemas/address",
            "type": "object",
            "properties": {"city": {"type": "string"}, "state": {"$ref": "#/definitions/state"}},
            "required": ["city", "state"],
            "definitions": {"state": {"enum": ["CA", "NY"]}},
        }
    },
}
SELF_BY_ID = {
    "$id": "https://example.com/schemas/root.json",
    "$defs": {"a": {"type": "string"}},
    "properties": {"x": {"$ref": "root.json#/$defs/a"}},
}
ANNOTATED = {
    "type": "object",
    "properties": {"photo": {"type": "string", "example": {"$ref": "assets/photo.png"}}},
    "x-ui": {"$ref": "widgets/profile"},
}


def config(tmp_path: Path, schema: object) -> dict[str, object]:
    (tmp_path / "s.json").write_text(json.dumps(schema))
    return {
        "regions": [{"name": "eu-west-1"}],
        "namespaces": [{"name": "profiles", "regions": ["eu-west-1"], "schema": "s.json"}],
    }


def test_the_bundling_example_applies_as_written() -> None:
    # The schema is valid and jsonschema resolves every reference in it.
    validator = Draft202012Validator(BUNDLED)
    good = {"first_name": "a", "shipping_address": {"city": "c", "state": "CA"}}
    bad = {"first_name": "a", "shipping_address": {"city": "c", "state": "XX"}}
    assert validator.is_valid(good) and not validator.is_valid(bad)


@pytest.mark.parametrize(
    "schema", [BUNDLED, SELF_BY_ID, ANNOTATED], ids=["bundled", "self-by-id", "annotation"]
)
def test_a_valid_schema_whose_refs_resolve_loads(tmp_path: Path, schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    cluster = parse_cluster(config(tmp_path, schema), "cluster.yaml", tmp_path)
    assert cluster.namespace("profiles").json_schema
