"""Reads a Cedar policy set and its schema, and refuses them unless they are usable as they are.

Refused, with the file, line and column: text that does not parse, a policy that does not
validate against the schema, a policy without a unique @id (decisions name policies by it), a
template (it would authorize nothing until linked), and a schema that leaves out an action of
some RPC (a new RPC must be decided on, not silently refused).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cedarpy

from domicile.authz.actions import ACTIONS
from domicile.authz.entities import ACTION_TYPE
from domicile.authz.locate import error_offset, first_failing_statement, location, statements
from domicile.errors import InvalidArgument

DEFAULT_POLICIES = "policies.cedar"
DEFAULT_SCHEMA = "schema.cedarschema"


@dataclass(frozen=True)
class PolicyBundle:
    policies: cedarpy.PolicySet
    schema: cedarpy.Schema
    # Cedar's positional id ("policy3") -> the policy's @id.
    ids: dict[str, str]
    # Action -> the action classes (groups) the schema puts it in.
    action_classes: dict[str, tuple[str, ...]]
    policies_source: str
    schema_source: str
    # What status and the audit trail name the policy set by (see policy_set_version).
    version: str = ""


def policy_set_version(policies_text: str) -> str:
    """A policy set's version: its text's SHA-256, so that every daemon given the same file
    reports the same version and any edit changes it."""
    return "sha256:" + hashlib.sha256(policies_text.encode("utf-8")).hexdigest()[:16]


def read_text(path: str | Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"{what} {path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{what} {path}: not UTF-8 text") from None


def default_text(name: str) -> str:
    return resources.files("domicile.authz").joinpath("defaults", name).read_text(encoding="utf-8")


def _where(source: str, text: str, offset: int) -> str:
    return f"{source}:{location(text, offset)}"


def _start_of(cedar_id: str, spans: list[tuple[int, int]]) -> int:
    """Where the policy Cedar numbered `cedar_id` ("policy3": the fourth statement) starts."""
    index = cedar_id.removeprefix("policy")
    return spans[int(index)][0] if index.isdigit() and int(index) < len(spans) else 0


def parse_schema(text: str, source: str) -> cedarpy.Schema:
    if source.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"{source}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
        try:
            return cedarpy.Schema.from_json_str(text)
        except ValueError as exc:
            raise InvalidArgument(f"{source}: invalid Cedar schema: {exc}") from None
    try:
        return cedarpy.Schema.from_str(text)
    except ValueError as exc:
        message = str(exc).removeprefix("error parsing schema: ")
        offset = error_offset(text, 0, len(text), message, cedarpy.Schema.from_str)
        raise InvalidArgument(f"{_where(source, text, offset)}: invalid Cedar schema: {message}") from None


def _parse_policies(text: str, source: str) -> cedarpy.PolicySet:
    try:
        return cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        failing = first_failing_statement(text, cedarpy.PolicySet.from_str)
        if failing is None:
            raise InvalidArgument(f"{source}: invalid Cedar policies: {exc}") from None
        start, end, message = failing
        offset = error_offset(text, start, end, message, cedarpy.PolicySet.from_str)
        raise InvalidArgument(f"{_where(source, text, offset)}: invalid Cedar policy: {message}") from None


def _policy_ids(text: str, source: str) -> dict[str, str]:
    est: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(text))
    spans = statements(text)
    if est.get("templates"):
        start = min(_start_of(cedar_id, spans) for cedar_id in est["templates"])
        raise InvalidArgument(
            f"{_where(source, text, start)}: a template (a policy with ?principal or ?resource) "
            "authorizes nothing until linked; write the policy for the principals it is meant for"
        )
    ids: dict[str, str] = {}
    seen: dict[str, str] = {}
    for cedar_id, policy in est.get("staticPolicies", {}).items():
        start = _start_of(cedar_id, spans)
        annotation = (policy.get("annotations") or {}).get("id") or ""
        if not annotation:
            raise InvalidArgument(
                f'{_where(source, text, start)}: every policy needs an @id("...") annotation: '
                "decisions name the policies that made them"
            )
        where = _where(source, text, start)
        if annotation in seen:
            raise InvalidArgument(f"{where}: @id({annotation!r}) is used twice (also at {seen[annotation]})")
        seen[annotation] = where
        ids[cedar_id] = annotation
    return ids


def _validate(text: str, schema: cedarpy.Schema, source: str, schema_source: str) -> None:
    result = cedarpy.validate_policies(text, schema)
    if result.validation_passed:
        return
    spans = statements(text)
    problems = []
    for error in result.errors:
        cedar_id = error.policy_id
        annotation = result.id_annotations_by_policy_id.get(cedar_id, cedar_id)
        start = _start_of(cedar_id, spans)
        problems.append(f"{_where(source, text, start)}: policy {annotation!r}: {error.error}")
    raise InvalidArgument(
        f"{source}: {len(problems)} policy error(s) against schema {schema_source}:\n" + "\n".join(problems)
    )


def _action_classes(schema: cedarpy.Schema, schema_source: str) -> dict[str, tuple[str, ...]]:
    declared: dict[str, tuple[str, ...]] = {}
    for entity in json.loads(str(cedarpy.Entities.from_json_str("[]", schema))):
        if entity["uid"]["type"] == ACTION_TYPE:
            declared[entity["uid"]["id"]] = tuple(sorted(p["id"] for p in entity["parents"]))
    missing = [name for name in ACTIONS if name not in declared]
    if missing:
        raise InvalidArgument(
            f"{schema_source}: no action is declared for the RPCs {', '.join(missing)}; every RPC of "
            f'domicile.v1 must be declared as {ACTION_TYPE}::"<service>.<Rpc>" so that policies decide it'
        )
    return {name: declared[name] for name in ACTIONS}


def load_bundle(
    policies_text: str, schema_text: str, policies_source: str, schema_source: str
) -> PolicyBundle:
    schema = parse_schema(schema_text, schema_source)
    action_classes = _action_classes(schema, schema_source)
    policy_set = _parse_policies(policies_text, policies_source)
    ids = _policy_ids(policies_text, policies_source)
    _validate(policies_text, schema, policies_source, schema_source)
    return PolicyBundle(
        policy_set,
        schema,
        ids,
        action_classes,
        policies_source,
        schema_source,
        policy_set_version(policies_text),
    )
