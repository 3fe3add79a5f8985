"""Quality gates: the JSON Schema (Draft 2020-12) a namespace's values must follow, and the
completeness of the fields it wants present.

A namespace with a schema accepts only JSON values that validate; a write that does not is
refused with INVALID_ARGUMENT naming the JSON path and the rule, before anything is audited or
written. `quality_fields` (optional) are top-level fields the dataset wants but does not
require; each accepted value scores the share of them it carries, and the namespace's
quality_score is the mean.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from domicile.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

JSON_CONTENT_TYPES = ("", "application/json")


@dataclass(frozen=True)
class SchemaViolation:
    path: str  # JSONPath of the offending value, "$" for the document itself
    rule: str  # the JSON Schema keyword that failed (type, required, maxLength, ...)
    message: str


def canonical_schema(document: Any, where: str) -> str:
    """Checks that `document` is a valid Draft 2020-12 schema; returns it as compact JSON text
    (the form the cluster config carries to the nodes)."""
    if not isinstance(document, Mapping):
        raise InvalidArgument(f"{where}: a JSON Schema must be an object, got {type(document).__name__}")
    # Imported here, not with the module: jsonschema takes about 0.1 s to import, and every
    # process that reads a cluster config imports this module (the CLI on each call), while
    # only a config whose namespaces have schemas needs it.
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(document)
    except SchemaError as exc:
        at = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidArgument(f"{where}: not a valid Draft 2020-12 schema at {at}: {exc.message}") from None
    # check_schema does not follow references: one that points nowhere would fail every write
    # that reaches it, long after the config was accepted.
    _check_refs(document, where)
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


# Draft 2020-12's keywords whose values are schemas: one, a list of them, or a map to them. The
# walk follows these alone; any other keyword's value is data (const, examples, annotations).
_SCHEMA_ONE = frozenset(
    {
        "additionalProperties", "contains", "contentSchema", "else", "if", "items", "not",
        "propertyNames", "then", "unevaluatedItems", "unevaluatedProperties",
    }
)  # fmt: skip
_SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAP = frozenset({"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"})


def _check_refs(document: Mapping[str, Any], where: str) -> None:
    """Refuses a schema with a `$ref` that does not resolve within the schema itself (a pointer
    to nowhere, or a remote document: nodes fetch nothing), resolving as the validator does:
    against the base URI of the nearest `$id`, with the schema's embedded resources known."""
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    def walk(node: Any, resolver: Any, at: str, root: bool = False) -> None:
        if not isinstance(node, Mapping):
            return
        if not root and isinstance(node.get("$id"), str):
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except Unresolvable:
                raise InvalidArgument(
                    f"{where}: $ref {ref!r} at {at or '(root)'} does not resolve within the schema; "
                    "a reference must point into the schema itself (for example #/$defs/NAME)"
                ) from None
        for keyword, value in node.items():
            if keyword in _SCHEMA_ONE:
                walk(value, resolver, f"{at}/{keyword}")
            elif keyword in _SCHEMA_LIST and isinstance(value, list):
                for i, item in enumerate(value):
                    walk(item, resolver, f"{at}/{keyword}/{i}")
            elif keyword in _SCHEMA_MAP and isinstance(value, Mapping):
                for name, item in value.items():
                    walk(item, resolver, f"{at}/{keyword}/{name}")

    resource = DRAFT202012.create_resource(dict(document))
    root_id = document.get("$id")
    base = root_id if isinstance(root_id, str) else ""
    registry = Registry().with_resource(base, resource).crawl()
    walk(document, registry.resolver(base_uri=base), "", root=True)


@lru_cache(maxsize=64)
def _validator(schema_text: str) -> Draft202012Validator:
    # Compiled once per schema text: building a validator costs more than using one.
    from jsonschema import Draft202012Validator  # see canonical_schema

    return Draft202012Validator(json.loads(schema_text))


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON value (RFC 8259 has no NaN or Infinity)")


def _strict_json(value: bytes) -> Any:
    """json.loads without Python's extensions: NaN, Infinity and -Infinity are refused (they are
    not JSON, and NaN compares false with every bound a schema sets)."""
    return json.loads(value, parse_constant=_not_json)


def _json_path(parts: Sequence[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def violation(schema_text: str, value: bytes, content_type: str = "") -> SchemaViolation | None:
    """The first violation of the value against the schema (the one deepest in the document
    when several fail at once), or None when it validates."""
    ct = content_type.split(";")[0].strip().lower()
    if ct not in JSON_CONTENT_TYPES and not ct.endswith("+json"):
        return SchemaViolation("$", "content_type", f"content type {content_type!r} is not JSON")
    try:
        document = _strict_json(value)
    except (UnicodeDecodeError, ValueError) as exc:
        return SchemaViolation("$", "json", f"the value is not JSON: {exc}")
    try:
        errors = sorted(
            _validator(schema_text).iter_errors(document), key=lambda e: (-len(e.path), str(e.path))
        )
    except Exception as exc:
        # A schema that passed canonical_schema cannot get here; one that did not (a config
        # written by an older version) is the namespace's fault, not the value's.
        raise FailedPrecondition(
            f"the namespace's schema cannot be applied ({type(exc).__name__}: {str(exc)[:200]}); "
            "fix it in the cluster config"
        ) from None
    if not errors:
        return None
    first = errors[0]
    return SchemaViolation(_json_path(list(first.absolute_path)), str(first.validator), first.message)


def completeness(value: bytes, fields: Sequence[str]) -> float:
    """The share of `fields` present (and not null) at the top level of a JSON object value."""
    if not fields:
        return 1.0
    try:
        document = _strict_json(value)
    except (UnicodeDecodeError, ValueError):
        return 0.0
    if not isinstance(document, dict):
        return 0.0
    return sum(1 for f in fields if document.get(f) is not None) / len(fields)


def refusal_message(namespace: str, v: SchemaViolation) -> str:
    return (
        f"value does not match the schema of namespace {namespace}: at {v.path}, rule {v.rule!r}: "
        f"{v.message[:300]}; nothing was written"
    )


@dataclass
class NamespaceFigures:
    validated: int = 0
    refused_by_rule: dict[str, int] | None = None
    scored: int = 0
    score_sum: float = 0.0

    @property
    def quality_score(self) -> float:
        return self.score_sum / self.scored if self.scored else 1.0


class QualityFigures:
    """Per namespace since the process started: values validated, refusals by rule, and the
    mean completeness of the quality fields. Updated on the event loop only."""

    def __init__(self) -> None:
        self.by_namespace: dict[str, NamespaceFigures] = {}

    def _of(self, namespace: str) -> NamespaceFigures:
        figures = self.by_namespace.get(namespace)
        if figures is None:
            figures = self.by_namespace[namespace] = NamespaceFigures(refused_by_rule={})
        return figures

    def refused(self, namespace: str, rule: str) -> None:
        by_rule = self._of(namespace).refused_by_rule
        assert by_rule is not None
        by_rule[rule] = by_rule.get(rule, 0) + 1

    def accepted(self, namespace: str, validated: bool, score: float | None) -> NamespaceFigures:
        figures = self._of(namespace)
        if validated:
            figures.validated += 1
        if score is not None:
            figures.scored += 1
            figures.score_sum += score
        return figures


def schema_from_text(text: str, where: str) -> str:
    """A schema given as JSON text (a candidate sent to the nodes): checked, then canonical."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: not JSON: {exc}") from None
    return canonical_schema(document, where)


def additive_problems(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What makes `new` more than an additive change of `old`, judged at the top level only: a
    newly required property, a property removed or changed, additional properties forbidden.
    A heuristic for people (`domicile catalog check-schemas`); the count of stored values that
    fail the new schema, which the nodes compute, is what decides."""
    problems: list[str] = []
    old_required = set(old.get("required") or ())
    problems += [
        f"requires {name!r}, which the schema in force does not"
        for name in new.get("required") or ()
        if name not in old_required
    ]
    old_props: Mapping[str, Any] = old.get("properties") or {}
    new_props: Mapping[str, Any] = new.get("properties") or {}
    for name, rule in old_props.items():
        if name not in new_props:
            problems.append(f"removes property {name!r}")
        elif new_props[name] != rule:
            problems.append(f"changes property {name!r}")
    if new.get("additionalProperties") is False and old.get("additionalProperties") is not False:
        problems.append("forbids additional properties")
    return problems
