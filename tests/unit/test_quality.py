"""The quality-gate logic (domicile/quality.py) and how a cluster config declares a schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from domicile.cluster import load_cluster, parse_cluster
from domicile.errors import InvalidArgument
from domicile.quality import (
    QualityFigures,
    additive_problems,
    canonical_schema,
    completeness,
    refusal_message,
    schema_from_text,
    violation,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "cluster.yaml"
CUSTOMER = json.loads((ROOT / "deploy" / "schemas" / "customer.schema.json").read_text())
SCHEMA = canonical_schema(CUSTOMER, "test")


@pytest.mark.parametrize(
    ("value", "path", "rule"),
    [
        (b'{"email": "a@b.c"}', "$", "required"),
        (b'{"name": ""}', "$.name", "minLength"),
        (b'{"name": "A", "country": "Germany"}', "$.country", "pattern"),
        (b'{"name": "A", "tax_residence": ["DE", "fr"]}', "$.tax_residence[1]", "pattern"),
        (b'{"name": "A", "suitability": "expert"}', "$.suitability", "enum"),
        (b'["name"]', "$", "type"),
        (b"\xff\xfe", "$", "json"),
        (b"{", "$", "json"),
    ],
)
def test_a_violation_names_the_json_path_and_the_rule(value, path, rule):
    found = violation(SCHEMA, value)
    assert found is not None and (found.path, found.rule) == (path, rule), found
    message = refusal_message("customers", found)
    assert f"at {path}, rule {rule!r}" in message and "nothing was written" in message


@pytest.mark.parametrize(
    "value",
    [
        b'{"name": "Anna"}',
        b'{"name": "Minjun", "country": "KR", "email": "m@example.com", "tax_residence": ["KR"]}',
        b'{"name": "A", "extra": {"anything": true}}',
    ],
)
def test_valid_values_pass(value):
    assert violation(SCHEMA, value) is None
    assert violation(SCHEMA, value, "application/json; charset=utf-8") is None
    assert violation(SCHEMA, value, "application/vnd.example+json") is None


def test_only_json_content_types_are_accepted():
    found = violation(SCHEMA, b'{"name": "A"}', "text/plain")
    assert found is not None and found.rule == "content_type"


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ([], "must be an object"),
        ({"type": 12}, "not a valid Draft 2020-12 schema"),
        ({"properties": {"a": {"minLength": -1}}}, "properties/a/minLength"),
    ],
)
def test_an_invalid_schema_is_refused(document, fragment):
    with pytest.raises(InvalidArgument, match=fragment.replace("(", r"\(")):
        canonical_schema(document, "where")
    with pytest.raises(InvalidArgument, match="where"):
        schema_from_text(json.dumps(document), "where")
    with pytest.raises(InvalidArgument, match="not JSON"):
        schema_from_text("{", "where")


def test_completeness_is_the_share_of_quality_fields_present():
    assert completeness(b'{"email": "a", "country": null}', ("email", "country")) == 0.5
    assert completeness(b'{"email": "a", "country": "DE"}', ("email", "country")) == 1.0
    assert completeness(b"[1]", ("email",)) == 0.0
    assert completeness(b"nope", ("email",)) == 0.0
    assert completeness(b"{}", ()) == 1.0


def test_figures_count_validated_refused_and_the_mean_score():
    figures = QualityFigures()
    figures.accepted("ns", True, 1.0)
    figures.accepted("ns", True, 0.0)
    figures.refused("ns", "type")
    figures.refused("ns", "type")
    figures.refused("ns", "required")
    ns = figures.by_namespace["ns"]
    assert (ns.validated, ns.refused_by_rule, ns.quality_score) == (2, {"type": 2, "required": 1}, 0.5)
    assert QualityFigures()._of("x").quality_score == 1.0


def test_additive_problems_of_a_schema_change():
    old = CUSTOMER
    assert (
        additive_problems(old, {**old, "properties": {**old["properties"], "nick": {"type": "string"}}}) == []
    )
    stricter = {**old, "required": ["name", "email"]}
    assert additive_problems(old, stricter) == ["requires 'email', which the schema in force does not"]
    narrowed = {**old, "properties": {**old["properties"], "name": {"type": "integer"}}}
    assert additive_problems(old, narrowed) == ["changes property 'name'"]
    removed = {**old, "properties": {k: v for k, v in old["properties"].items() if k != "phone"}}
    assert additive_problems(old, removed) == ["removes property 'phone'"]
    closed = {**old, "additionalProperties": False}
    assert additive_problems(old, closed) == ["forbids additional properties"]


# -- the cluster config ---------------------------------------------------------------------


def config(tmp_path: Path, **namespace: Any) -> Any:
    data = {
        "regions": [{"name": "eu-west-1", "country": "IE"}],
        "namespaces": [{"name": "ns", "regions": "global", **namespace}],
    }
    return parse_cluster(data, "cluster.yaml", tmp_path).namespace("ns")


def test_the_sample_customers_follow_a_schema_with_quality_fields():
    spec = load_cluster(SAMPLE).namespace("customers")
    assert json.loads(spec.json_schema)["required"] == ["name"]
    assert spec.catalog.schema == "schemas/customer.schema.json"
    assert spec.quality_fields == ("email", "country")


def test_a_schema_is_read_relative_to_the_config(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"type": "object"}))
    assert config(tmp_path, schema="s.json").json_schema == '{"type":"object"}'
    assert config(tmp_path).json_schema == ""


@pytest.mark.parametrize(
    ("content", "fields", "fragment"),
    [
        (None, {}, r"namespaces\[0\] \(ns\).schema: cannot read"),
        ("{", {}, r"\(ns\).schema: .* is not JSON"),
        ('{"type": 5}', {}, r"\(ns\).schema \(s.json\): not a valid Draft 2020-12 schema"),
        ('{"type": "object"}', {"quality_fields": "email"}, r"\(ns\).quality_fields: expected a list"),
        ('{"type": "object"}', {"quality_fields": ["a", "a"]}, "listed twice"),
    ],
)
def test_a_bad_schema_declaration_is_refused_naming_the_field(tmp_path, content, fields, fragment):
    if content is not None:
        (tmp_path / "s.json").write_text(content)
    with pytest.raises(InvalidArgument, match=fragment):
        config(tmp_path, schema="s.json", **fields)
