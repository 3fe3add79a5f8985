"""The catalog metadata of a namespace: who answers for it, why and on what lawful basis its
records are processed, about whom, what data, for which recipients, and the schema its values
follow.

These are the facts GDPR Art. 30(1) asks the record of processing activities to hold (see
domicile/ropa.py) and what `domicile catalog` shows. They are read from the cluster config
with the namespace and validated there, every error naming the field at fault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from domicile.errors import InvalidArgument

# The fields a namespace may carry for the catalog (besides its own: owner, description,
# purposes, retention_class, ...).
CATALOG_KEYS = ("steward", "lawful_basis", "data_subjects", "personal_data", "recipients", "schema")
TEXT_MAX = 300
ITEMS_MAX = 64
# A law id as the policy pack writes it (gdpr, uk-gdpr, ru-152fz).
LAW_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,47}\Z")


@dataclass(frozen=True)
class NamespaceCatalog:
    # A person or mailbox to contact about the dataset (the owner is the accountable team).
    steward: str = ""
    # law id of the policy pack -> the lawful basis relied on under it (GDPR Art. 6(1)(b) ...).
    lawful_basis: Mapping[str, str] = field(default_factory=dict)
    # Categories of data subjects and of personal data (GDPR Art. 30(1)(c)).
    data_subjects: tuple[str, ...] = ()
    personal_data: tuple[str, ...] = ()
    # Categories of recipients to whom the records are disclosed (Art. 30(1)(d)).
    recipients: tuple[str, ...] = ()
    # The JSON Schema reference as written in the config (a path relative to it); "" for none.
    schema: str = ""


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{where}: expected non-empty text, got {value!r}")
    text = value.strip()
    if len(text) > TEXT_MAX:
        raise InvalidArgument(f"{where}: is {len(text)} characters; the limit is {TEXT_MAX}")
    return text


def _text_list(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    at = f"{where}.{key}"
    if not isinstance(value, list):
        raise InvalidArgument(f"{at}: expected a list of short texts, e.g. [customers, prospects]")
    if len(value) > ITEMS_MAX:
        raise InvalidArgument(f"{at}: {len(value)} items; the limit is {ITEMS_MAX}")
    out: list[str] = []
    for i, item in enumerate(value):
        text = _text(item, f"{at}[{i}]")
        if text in out:
            raise InvalidArgument(f"{at}[{i}]: {text!r} is listed twice")
        out.append(text)
    return tuple(out)


def _lawful_basis(raw: Mapping[str, Any], where: str, law_ids: Iterable[str] | None) -> dict[str, str]:
    value = raw.get("lawful_basis")
    if value is None:
        return {}
    at = f"{where}.lawful_basis"
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            f'{at}: expected a mapping of law id to basis, e.g. {{gdpr: "Art. 6(1)(b) contract"}}'
        )
    known = list(law_ids) if law_ids is not None else None
    out: dict[str, str] = {}
    for law, basis in value.items():
        if not isinstance(law, str) or not LAW_ID_RE.match(law):
            raise InvalidArgument(f"{at}: {law!r} is not a law id (lower-case, e.g. gdpr, uk-gdpr)")
        if known is not None and law not in known:
            raise InvalidArgument(
                f"{at}.{law}: unknown law {law!r}; laws of the policy pack: {', '.join(known) or 'none'}"
            )
        out[law] = _text(basis, f"{at}.{law}")
    return out


def parse_catalog(
    raw: Mapping[str, Any], where: str, law_ids: Iterable[str] | None = None
) -> NamespaceCatalog:
    """The catalog fields of one namespace entry; `law_ids` (the policy pack's laws, None when the
    cluster has no pack) checks the keys of lawful_basis."""
    steward = raw.get("steward")
    schema = raw.get("schema")
    return NamespaceCatalog(
        steward=_text(steward, f"{where}.steward") if steward is not None else "",
        lawful_basis=_lawful_basis(raw, where, law_ids),
        data_subjects=_text_list(raw, "data_subjects", where),
        personal_data=_text_list(raw, "personal_data", where),
        recipients=_text_list(raw, "recipients", where),
        schema=_text(schema, f"{where}.schema") if schema is not None else "",
    )


CONTROLLER_KEYS = ("name", "contact", "representative", "dpo")


@dataclass(frozen=True)
class Controller:
    """Who decides the purposes and means of the processing (GDPR Art. 30(1)(a))."""

    name: str
    contact: str
    # The EU representative (Art. 27) and the data protection officer, where there are.
    representative: str = ""
    dpo: str = ""


def parse_controller(raw: Any, where: str) -> Controller | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{where}: expected a mapping with name and contact")
    unknown = sorted(str(k) for k in raw if k not in CONTROLLER_KEYS)
    if unknown:
        raise InvalidArgument(f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(CONTROLLER_KEYS)}")
    for key in ("name", "contact"):
        if raw.get(key) is None:
            raise InvalidArgument(f"{where}: missing required field {key!r}")
    return Controller(
        name=_text(raw["name"], f"{where}.name"),
        contact=_text(raw["contact"], f"{where}.contact"),
        representative=_text(raw["representative"], f"{where}.representative")
        if raw.get("representative")
        else "",
        dpo=_text(raw["dpo"], f"{where}.dpo") if raw.get("dpo") else "",
    )
