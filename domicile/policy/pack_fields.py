"""Typed readers for the fields of a policy pack.

Each reader takes the parsed YAML value and `at`, the location of the enclosing field
(`"pack.yaml: laws[0] (gdpr)"`), and raises InvalidArgument naming the field at fault and what
it accepts. Unknown keys are errors, so that a misspelt switch (`in_forse: false`) cannot
silently leave a transfer allowed.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

from domicile.errors import InvalidArgument

# \Z, not $: $ also matches before a final newline.
IDENT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,47}\Z")


def fail(at: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{at} {message}" if at.endswith(":") else f"{at}: {message}")


def join(at: str, key: str) -> str:
    """The location of field `key` inside `at`; a top-level `at` is the source and a colon."""
    return f"{at} {key}" if at.endswith(":") else f"{at}.{key}"


def mapping(value: Any, at: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(at, f"expected a mapping, got {type(value).__name__}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise fail(at, f"keys must be strings; got {bad[0]!r}")
    return value


def sequence(value: Any, at: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise fail(at, f"expected a list, got {type(value).__name__}")
    return value


def only_keys(m: Mapping[str, Any], allowed: Sequence[str], at: str) -> None:
    unknown = sorted(k for k in m if k not in allowed)
    if unknown:
        raise fail(at, f"unknown field {unknown[0]!r}; allowed fields: {', '.join(allowed)}")


def present(m: Mapping[str, Any], key: str, at: str) -> Any:
    if key not in m or m[key] is None:
        raise fail(at, f"missing required field {key!r}")
    return m[key]


def text(m: Mapping[str, Any], key: str, at: str, *, required: bool = True, limit: int = 2000) -> str:
    """A string field; required ones must be non-empty."""
    if not required and m.get(key) is None:
        return ""
    value = present(m, key, at)
    if not isinstance(value, str):
        raise fail(join(at, key), f"expected text, got {type(value).__name__} {value!r} (quote it)")
    value = value.strip()
    if required and not value:
        raise fail(join(at, key), "must not be empty")
    if len(value) > limit:
        raise fail(join(at, key), f"is {len(value)} characters; the limit is {limit}")
    return value


def flag(m: Mapping[str, Any], key: str, at: str, *, default: bool | None = None) -> bool:
    """A yes/no field. Without a default it is required: a legal switch is never implicit."""
    if m.get(key) is None:
        if default is None:
            raise fail(at, f"missing required field {key!r} (true or false)")
        return default
    value = m[key]
    if not isinstance(value, bool):
        raise fail(join(at, key), f"expected true or false, got {value!r}")
    return value


def date(m: Mapping[str, Any], key: str, at: str) -> datetime.date:
    value = present(m, key, at)
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise fail(join(at, key), f"expected a date as YYYY-MM-DD, got {value!r}")


def ident(value: Any, at: str) -> str:
    if not isinstance(value, str) or not IDENT_RE.match(value):
        raise fail(
            at,
            f"invalid identifier {value!r}: use 1 to 48 lower-case letters, digits, '_' and '-', "
            "starting with a letter",
        )
    return value


def one_of(m: Mapping[str, Any], key: str, at: str, allowed: Sequence[str], default: str) -> str:
    value = m.get(key, default)
    if value not in allowed:
        raise fail(join(at, key), f"got {value!r}; allowed: {', '.join(allowed)}")
    return str(value)


def text_list(m: Mapping[str, Any], key: str, at: str, *, required: bool = True) -> tuple[str, ...]:
    if not required and m.get(key) is None:
        return ()
    items = sequence(present(m, key, at), join(at, key))
    out: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise fail(f"{join(at, key)}[{i}]", f"expected non-empty text, got {item!r}")
        if item in out:
            raise fail(f"{join(at, key)}[{i}]", f"{item!r} is listed twice")
        out.append(item.strip())
    if required and not out:
        raise fail(join(at, key), "must not be empty")
    return tuple(out)
