"""A namespace schema's references must resolve within the schema: check_schema does not follow
them, so one pointing nowhere used to pass the config and then fail every write that reached it
with UNKNOWN (regression)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domicile import quality
from domicile.cluster import parse_cluster
from domicile.errors import FailedPrecondition, InvalidArgument

DANGLING = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/adress"}},
    "$defs": {"address": {"type": "object"}},
}


def config(tmp_path: Path, schema: object) -> dict[str, object]:
    (tmp_path / "s.json").write_text(json.dumps(schema))
    return {
        "regions": [{"name": "eu-west-1"}],
        "namespaces": [{"name": "profiles", "regions": ["eu-west-1"], "schema": "s.json"}],
    }


def test_a_schema_with_a_dangling_ref_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"profiles.*#/\$defs/adress.*does not resolve"):
        parse_cluster(config(tmp_path, DANGLING), "cluster.yaml", tmp_path)


def test_a_remote_ref_is_refused_nodes_fetch_nothing(tmp_path: Path) -> None:
    schema = {"properties": {"a": {"$ref": "https://example.com/schemas/a.json"}}}
    with pytest.raises(InvalidArgument, match="does not resolve"):
        parse_cluster(config(tmp_path, schema), "cluster.yaml", tmp_path)


def test_refs_that_resolve_are_accepted(tmp_path: Path) -> None:
    schema = {
        "$id": "https://example.com/root.json",
        "properties": {
            "address": {"$ref": "#/$defs/address"},
            "also": {"$ref": "https://example.com/root.json#/$defs/address"},
            # Inside a subschema with an $id of its own, "#..." is relative to that subschema.
            "nested": {"$id": "https://example.com/nested.json", "$defs": {"x": {}}, "$ref": "#/$defs/x"},
            # Data, not a reference.
            "literal": {"const": {"$ref": "#/nowhere"}},
        },
        "$defs": {"address": {"type": "object"}},
    }
    cluster = parse_cluster(config(tmp_path, schema), "cluster.yaml", tmp_path)
    assert cluster.namespace("profiles").json_schema


def test_a_schema_that_cannot_be_applied_is_the_namespaces_fault_not_the_values() -> None:
    # A schema that bypassed the load check (a config of an older version): the value is not
    # to blame, so the write is refused FAILED_PRECONDITION, not INVALID_ARGUMENT or UNKNOWN.
    text = json.dumps(DANGLING, sort_keys=True, separators=(",", ":"))
    assert quality.violation(text, b'{"name": "Ada"}') is None
    with pytest.raises(FailedPrecondition, match="cluster config"):
        quality.violation(text, b'{"name": "Ada", "address": {}}')
