"""Policy packs for tests: the shipped sample pack, and variants with one fact changed, the way
an operator would change it (edit the fact, bump the version)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SAMPLE_PACK = Path(__file__).resolve().parents[2] / "deploy" / "policy" / "pack.yaml"


def sample_pack() -> dict[str, Any]:
    # libyaml's loader, as the nodes use (domicile.yaml_text): many tests start a cluster with
    # this 34 KB pack.
    data: dict[str, Any] = yaml.load(SAMPLE_PACK.read_text(), Loader=yaml.CSafeLoader)
    return data


def set_fact(pack: dict[str, Any], path: list[str], value: Any) -> None:
    """Sets pack[path...] to `value`; a fact (a mapping with `value`) gets its value replaced and
    keeps its date and source."""
    node: Any = pack
    for part in path[:-1]:
        node = node.setdefault(part, {})
    leaf = path[-1]
    if isinstance(node.get(leaf), dict) and "value" in node[leaf] and not isinstance(value, dict):
        node[leaf]["value"] = value
    else:
        node[leaf] = value


def with_fact(pack: dict[str, Any], version: str, path: list[str], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(pack)
    out["version"] = version
    set_fact(out, path, value)
    return out


def set_adequacy(pack: dict[str, Any], law_id: str, country: str, in_force: bool) -> None:
    """Switches one adequacy decision of one law on or off."""
    law = next(law for law in pack["laws"] if law["id"] == law_id)
    entry = next(c for c in law["adequacy"]["countries"] if c["country"] == country)
    entry["in_force"] = in_force


def set_read_refused(pack: dict[str, Any], classification: str, redact_fields: list[str] | None) -> None:
    """Makes reads the law refuses answer with `redact_fields` removed (None: refuse them)."""
    rule = pack["classifications"][classification]
    if redact_fields is None:
        rule.pop("on_read_refused", None)
        rule.pop("redact_fields", None)
    else:
        rule["on_read_refused"] = "redact"
        rule["redact_fields"] = redact_fields
