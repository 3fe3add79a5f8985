"""The policy pack: the versioned facts every residency and transfer decision relies on.

A pack is plain YAML kept in the repository (deploy/policy/pack.yaml) so that an operator can
tighten or loosen a rule without a code change: which regions exist and in which country, which
countries form the EEA, which adequacy decisions are in force, and which transfer mechanisms
(standard clauses, DPF certification, consent, CAC filings, ...) are recorded for each
destination region. Every fact carries the date it was last checked and its source, and a
decision quotes the facts it relied on.

The legal logic of each regime (what "home", "adequacy" and "mechanism" mean) is code, in
domicile/policy/rules.py; which law applies to whom, and the facts, are data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from domicile.errors import InvalidArgument
from domicile.model import Classification
from domicile.policy import pack_fields as f
from domicile.policy.jurisdiction import Jurisdiction, parse_jurisdiction
from domicile.policy.pack_model import (
    REDACTABLE_FIELDS,
    Adequacy,
    ClassificationRule,
    CountryGroup,
    Destination,
    Fact,
    Law,
    PackRegion,
    PolicyPack,
    Regime,
    UnlistedJurisdictions,
)
from domicile.yaml_text import load_yaml

__all__ = [
    "Adequacy",
    "ClassificationRule",
    "CountryGroup",
    "Destination",
    "Fact",
    "Law",
    "PackRegion",
    "PolicyPack",
    "Regime",
    "UnlistedJurisdictions",
    "load_pack",
    "parse_pack",
]

PACK_BYTES_MAX = 1024 * 1024
# \Z, not $: $ also matches before a final newline ("eu-west-1\n" is no region name).
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
REGION_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
GROUP_RE = re.compile(r"^[A-Z][A-Z0-9_]{2,31}\Z")
LABEL_RE = re.compile(r"^[A-Z][A-Z0-9-]{1,15}\Z")

# -- parsing ---------------------------------------------------------------------------------

_TOP_KEYS = (
    "version",
    "description",
    "regions",
    "country_groups",
    "classifications",
    "unlisted_jurisdictions",
    "laws",
    "destinations",
)
_REGION_KEYS = ("name", "country", "subdivision", "jurisdiction", "location")
_GROUP_KEYS = ("members", "checked", "source", "note")
_CLASS_KEYS = ("personal_data", "regions", "on_read_refused", "redact_fields")
_LAW_KEYS = (
    "id",
    "name",
    "title",
    "regime",
    "subjects",
    "checked",
    "source",
    "note",
    "home",
    "home_basis",
    "refusal_basis",
    "basis",
    "adequacy",
    "mechanisms",
    "restrictions",
)
_ADEQUACY_KEYS = ("basis", "countries")
_ADEQUATE_COUNTRY_KEYS = (
    "country",
    "name",
    "decision",
    "in_force",
    "requires",
    "scope",
    "checked",
    "source",
    "note",
)
_FACT_KEYS = ("value", "checked", "source", "note")
_DESTINATION_KEYS = ("recipient", "mechanisms")

# Which optional law fields each regime needs (True), accepts (False) or forbids (absent).
_REGIME_FIELDS: Mapping[Regime, Mapping[str, bool]] = {
    Regime.TRANSFER_RESTRICTED: {
        "home": True,
        "home_basis": True,
        "refusal_basis": True,
        "adequacy": False,
        "mechanisms": False,
    },
    Regime.NO_LOCALIZATION: {"basis": True},
    Regime.PRIMARY_IN_COUNTRY: {"home": True, "home_basis": True, "refusal_basis": True, "mechanisms": False},
    Regime.TRANSFER_UNLESS_RESTRICTED: {"basis": True, "restrictions": True},
}


def _country(value: Any, at: str) -> str:
    if value is False:
        # YAML 1.1 reads an unquoted NO as false.
        raise f.fail(at, 'got false: write Norway\'s code quoted, as "NO"')
    if not isinstance(value, str):
        raise f.fail(at, f"expected an ISO 3166-1 alpha-2 code, got {value!r}")
    j = _jurisdiction(value, at)
    if j.subdivision:
        raise f.fail(at, f"{value!r} is a subdivision; a country (ISO 3166-1 alpha-2) is required here")
    return j.country


def _jurisdiction(value: str, at: str) -> Jurisdiction:
    try:
        return parse_jurisdiction(value, "code")
    except InvalidArgument as exc:
        raise f.fail(at, exc.message) from None


def _fact(value: Any, at: str) -> Fact:
    m = f.mapping(value, at)
    f.only_keys(m, _FACT_KEYS, at)
    return Fact(
        value=f.flag(m, "value", at),
        checked=f.date(m, "checked", at),
        source=f.text(m, "source", at),
        note=f.text(m, "note", at, required=False),
    )


def _regions(raw: Any, at: str) -> tuple[PackRegion, ...]:
    out: list[PackRegion] = []
    for i, item in enumerate(f.sequence(raw, at)):
        where = f"{at}[{i}]"
        m = f.mapping(item, where)
        f.only_keys(m, _REGION_KEYS, where)
        name = f.text(m, "name", where)
        if not REGION_RE.match(name):
            raise f.fail(
                f"{where}.name", f"invalid region name {name!r}: use lower-case letters, digits and '-'"
            )
        where = f"{at}[{i}] ({name})"
        if any(r.name == name for r in out):
            raise f.fail(where, f"region {name} is listed twice")
        country = _country(f.present(m, "country", where), f"{where}.country")
        subdivision = f.text(m, "subdivision", where, required=False)
        if subdivision:
            sub = _jurisdiction(subdivision, f"{where}.subdivision")
            if not sub.subdivision or sub.country != country:
                raise f.fail(
                    f"{where}.subdivision",
                    f"{subdivision!r} must be an ISO 3166-2 code of {country} (e.g. {country}-XX)",
                )
        jurisdiction = f.text(m, "jurisdiction", where)
        if not LABEL_RE.match(jurisdiction):
            raise f.fail(
                f"{where}.jurisdiction", f"{jurisdiction!r}: use upper-case letters (e.g. US, EU, JP)"
            )
        out.append(
            PackRegion(name, country, jurisdiction, subdivision, f.text(m, "location", where, required=False))
        )
    if not out:
        raise f.fail(at, "must list at least one region")
    return tuple(out)


def _groups(raw: Any, at: str) -> dict[str, CountryGroup]:
    out: dict[str, CountryGroup] = {}
    for name, item in f.mapping(raw, at).items():
        where = f"{at}.{name}"
        if not GROUP_RE.match(name):
            raise f.fail(
                where,
                "a group name is 3 to 32 upper-case letters, digits or '_' (so that it cannot be "
                "mistaken for a country code)",
            )
        m = f.mapping(item, where)
        f.only_keys(m, _GROUP_KEYS, where)
        members = [
            _country(c, f"{where}.members[{i}]")
            for i, c in enumerate(f.sequence(f.present(m, "members", where), f"{where}.members"))
        ]
        if not members:
            raise f.fail(f"{where}.members", "must not be empty")
        if len(set(members)) != len(members):
            dup = next(c for c in members if members.count(c) > 1)
            raise f.fail(f"{where}.members", f"{dup} is listed twice")
        out[name] = CountryGroup(
            name,
            tuple(members),
            f.date(m, "checked", where),
            f.text(m, "source", where),
            f.text(m, "note", where, required=False),
        )
    return out


def _codes(m: Mapping[str, Any], key: str, at: str, groups: Mapping[str, CountryGroup]) -> tuple[str, ...]:
    """A list of country codes, subdivision codes and group names."""
    out: list[str] = []
    for i, item in enumerate(f.sequence(f.present(m, key, at), f"{at}.{key}")):
        where = f"{at}.{key}[{i}]"
        if isinstance(item, str) and item in groups:
            out.append(item)
        elif isinstance(item, str) and GROUP_RE.match(item):
            known = ", ".join(sorted(groups)) or "none"
            raise f.fail(where, f"unknown country group {item!r}; defined groups: {known}")
        elif isinstance(item, str):
            out.append(_jurisdiction(item, where).code)
        else:
            out.append(_country(item, where))
        if out[-1] in out[:-1]:
            raise f.fail(where, f"{out[-1]} is listed twice")
    if not out:
        raise f.fail(f"{at}.{key}", "must not be empty")
    return tuple(out)


def _classifications(raw: Any, at: str, regions: Iterable[str]) -> dict[Classification, ClassificationRule]:
    m = f.mapping(raw, at)
    labels = [c.label for c in Classification if c is not Classification.UNSPECIFIED]
    f.only_keys(m, labels, at)
    known_regions = list(regions)
    out: dict[Classification, ClassificationRule] = {}
    for label in labels:
        where = f"{at}.{label}"
        if label not in m:
            raise f.fail(
                at, f"missing classification {label!r}; every one of {', '.join(labels)} needs a rule"
            )
        c = f.mapping(m[label], where)
        f.only_keys(c, _CLASS_KEYS, where)
        limited: tuple[str, ...] | None = None
        if c.get("regions") is not None:
            limited = f.text_list(c, "regions", where)
            unknown = [r for r in limited if r not in known_regions]
            if unknown:
                raise f.fail(
                    f"{where}.regions",
                    f"unknown region {unknown[0]!r}; regions of the pack: {', '.join(known_regions)}",
                )
        on_refused = f.one_of(c, "on_read_refused", where, ("refuse", "redact"), "refuse")
        fields = f.text_list(c, "redact_fields", where, required=on_refused == "redact")
        if on_refused == "refuse" and fields:
            raise f.fail(f"{where}.redact_fields", "only meaningful with on_read_refused: redact")
        bad = [x for x in fields if x not in REDACTABLE_FIELDS]
        if bad:
            raise f.fail(
                f"{where}.redact_fields",
                f"cannot redact {bad[0]!r}; redactable: {', '.join(REDACTABLE_FIELDS)}",
            )
        out[Classification.parse(label)] = ClassificationRule(
            Classification.parse(label), f.flag(c, "personal_data", where), limited, on_refused, fields
        )
    return out


def _adequacy(
    raw: Any, at: str, home: frozenset[str], groups: Mapping[str, CountryGroup]
) -> tuple[str, tuple[Adequacy, ...]]:
    m = f.mapping(raw, at)
    f.only_keys(m, _ADEQUACY_KEYS, at)
    basis = f.text(m, "basis", at)
    out: list[Adequacy] = []
    covered: dict[str, str] = {}
    for i, item in enumerate(f.sequence(f.present(m, "countries", at), f"{at}.countries")):
        where = f"{at}.countries[{i}]"
        e = f.mapping(item, where)
        f.only_keys(e, _ADEQUATE_COUNTRY_KEYS, where)
        raw_country = f.present(e, "country", where)
        # One decision may cover a whole group (Brazil's for the EU and the EEA).
        if isinstance(raw_country, str) and raw_country in groups:
            country, members = raw_country, groups[raw_country].members
        else:
            country = _country(raw_country, f"{where}.country")
            members = (country,)
        where = f"{where} ({country})"
        for member in members:
            if member in home:
                raise f.fail(
                    where, f"{member} is inside the law's home area; an adequacy entry is for third countries"
                )
            if member in covered:
                raise f.fail(where, f"{member} is already covered by the entry for {covered[member]}")
            covered[member] = country
        requires = f.text(e, "requires", where, required=False)
        if requires:
            f.ident(requires, f"{where}.requires")
        fact = Fact(
            f.flag(e, "in_force", where),
            f.date(e, "checked", where),
            f.text(e, "source", where),
            f.text(e, "note", where, required=False),
        )
        out.append(
            Adequacy(
                country,
                f.text(e, "name", where),
                f.text(e, "decision", where),
                fact,
                requires,
                f.text(e, "scope", where, required=False),
                members,
            )
        )
    return basis, tuple(out)


def _mechanisms(raw: Any, at: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, basis in f.mapping(raw, at).items():
        f.ident(kind, f"{at}.{kind}")
        if not isinstance(basis, str) or not basis.strip():
            raise f.fail(f"{at}.{kind}", "expected the legal basis of this mechanism as text")
        out[kind] = basis.strip()
    return out


def _law(
    raw: Any,
    at: str,
    groups: Mapping[str, CountryGroup],
    expand: Callable[[Iterable[str]], frozenset[str]],
) -> Law:
    m = f.mapping(raw, at)
    f.only_keys(m, _LAW_KEYS, at)
    law_id = f.ident(f.present(m, "id", at), f"{at}.id")
    at = f"{at} ({law_id})"
    regime_text = f.present(m, "regime", at)
    try:
        regime = Regime(regime_text)
    except ValueError:
        raise f.fail(
            f"{at}.regime", f"got {regime_text!r}; allowed: {', '.join(r.value for r in Regime)}"
        ) from None
    wanted = _REGIME_FIELDS[regime]
    for key in ("home", "home_basis", "refusal_basis", "basis", "adequacy", "mechanisms", "restrictions"):
        if key in m and key not in wanted:
            raise f.fail(f"{at}.{key}", f"does not apply to regime {regime.value}")
        if wanted.get(key) and m.get(key) is None:
            raise f.fail(at, f"missing required field {key!r} for regime {regime.value}")
    home = _codes(m, "home", at, groups) if "home" in wanted else ()
    adequacy_basis = ""
    adequacy: tuple[Adequacy, ...] = ()
    if m.get("adequacy") is not None:
        adequacy_basis, adequacy = _adequacy(m["adequacy"], f"{at}.adequacy", expand(home), groups)
    restriction_basis = ""
    restrictions: tuple[Adequacy, ...] = ()
    if m.get("restrictions") is not None:
        restriction_basis, restrictions = _restrictions(m["restrictions"], f"{at}.restrictions", groups)
    return Law(
        id=law_id,
        name=f.text(m, "name", at, limit=80),
        title=f.text(m, "title", at),
        regime=regime,
        subjects=_codes(m, "subjects", at, groups),
        checked=f.date(m, "checked", at),
        source=f.text(m, "source", at),
        home=home,
        home_basis=f.text(m, "home_basis", at, required=bool(wanted.get("home_basis"))),
        refusal_basis=f.text(m, "refusal_basis", at, required=bool(wanted.get("refusal_basis"))),
        basis=f.text(m, "basis", at, required=bool(wanted.get("basis"))),
        adequacy_basis=adequacy_basis,
        adequacy=adequacy,
        mechanisms=_mechanisms(m["mechanisms"], f"{at}.mechanisms")
        if m.get("mechanisms") is not None
        else {},
        note=f.text(m, "note", at, required=False),
        restriction_basis=restriction_basis,
        restrictions=restrictions,
    )


def _restrictions(raw: Any, at: str, groups: Mapping[str, CountryGroup]) -> tuple[str, tuple[Adequacy, ...]]:
    """The countries a government has restricted transfers to: entries shaped like adequacy
    entries (country, name, decision = the notification, in_force, checked, source), read with
    the same reader. The list may be empty (no restriction notified yet); a recipient condition
    makes no sense for a restriction, so `requires` is refused."""
    m = f.mapping(raw, at)
    for i, item in enumerate(f.sequence(f.present(m, "countries", at), f"{at}.countries")):
        if isinstance(item, Mapping) and item.get("requires") is not None:
            raise f.fail(f"{at}.countries[{i}].requires", "does not apply to a restriction")
    return _adequacy(raw, at, frozenset(), groups)


def _destinations(raw: Any, at: str, regions: Iterable[str], laws: tuple[Law, ...]) -> dict[str, Destination]:
    known_regions = list(regions)
    by_id = {law.id: law for law in laws}
    used_recipient_facts = sorted({a.requires for law in laws for a in law.adequacy if a.requires})
    out: dict[str, Destination] = {}
    for region, item in f.mapping(raw, at).items():
        where = f"{at}.{region}"
        if region not in known_regions:
            raise f.fail(where, f"unknown region {region!r}; regions of the pack: {', '.join(known_regions)}")
        m = f.mapping(item, where)
        f.only_keys(m, _DESTINATION_KEYS, where)
        recipient: dict[str, Fact] = {}
        for name, fact in f.mapping(m.get("recipient") or {}, f"{where}.recipient").items():
            if name not in used_recipient_facts:
                raise f.fail(
                    f"{where}.recipient.{name}",
                    f"no law relies on recipient fact {name!r}; facts the adequacy entries require: "
                    f"{', '.join(used_recipient_facts) or 'none'}",
                )
            recipient[name] = _fact(fact, f"{where}.recipient.{name}")
        mechanisms: dict[tuple[str, str], Fact] = {}
        for law_id, kinds in f.mapping(m.get("mechanisms") or {}, f"{where}.mechanisms").items():
            law_at = f"{where}.mechanisms.{law_id}"
            law = by_id.get(law_id)
            if law is None:
                raise f.fail(law_at, f"unknown law {law_id!r}; laws of the pack: {', '.join(by_id)}")
            for kind, fact in f.mapping(kinds, law_at).items():
                if kind not in law.mechanisms:
                    accepted = ", ".join(law.mechanisms) or "none"
                    raise f.fail(
                        f"{law_at}.{kind}",
                        f"{law.name} accepts no mechanism {kind!r}; it accepts: {accepted}",
                    )
                mechanisms[(law_id, kind)] = _fact(fact, f"{law_at}.{kind}")
        out[region] = Destination(region, recipient, mechanisms)
    return out


def parse_pack(data: Any, source: str = "policy pack") -> PolicyPack:
    """Builds a PolicyPack from parsed YAML, naming the field at fault on any error."""
    at = f"{source}:"
    top = f.mapping(data, source)
    f.only_keys(top, _TOP_KEYS, at)
    version = f.present(top, "version", at)
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise f.fail(
            f.join(at, "version"),
            f"got {version!r}; use 1 to 64 letters, digits, '.', '_', '+' or '-', quoted "
            '(e.g. "2026-11-27.1")',
        )
    regions = _regions(f.present(top, "regions", at), f.join(at, "regions"))
    region_names = [r.name for r in regions]
    groups = _groups(top.get("country_groups") or {}, f.join(at, "country_groups"))

    def expand(codes: Iterable[str]) -> frozenset[str]:
        return frozenset(c for code in codes for c in (groups[code].members if code in groups else (code,)))

    classifications = _classifications(
        f.present(top, "classifications", at), f.join(at, "classifications"), region_names
    )
    laws_raw = f.sequence(f.present(top, "laws", at), f.join(at, "laws"))
    laws = tuple(_law(raw, f"{at} laws[{i}]", groups, expand) for i, raw in enumerate(laws_raw))
    if not laws:
        raise f.fail(f.join(at, "laws"), "must list at least one law")
    seen: set[str] = set()
    for law in laws:
        if law.id in seen:
            raise f.fail(f.join(at, "laws"), f"law id {law.id!r} is used twice")
        seen.add(law.id)
    destinations = _destinations(
        top.get("destinations") or {}, f.join(at, "destinations"), region_names, laws
    )
    unlisted = f.one_of(top, "unlisted_jurisdictions", at, [u.value for u in UnlistedJurisdictions], "refuse")
    return PolicyPack(
        version=version,
        regions=regions,
        groups=groups,
        classifications=classifications,
        laws=laws,
        destinations=destinations,
        unlisted_jurisdictions=UnlistedJurisdictions(unlisted),
        description=f.text(top, "description", at, required=False),
        source=source,
    )


def load_pack(path: str | Path) -> PolicyPack:
    """Reads and validates a pack file (the only I/O of the policy package)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(PACK_BYTES_MAX + 1)
    except FileNotFoundError:
        raise InvalidArgument(f"policy pack {path} does not exist") from None
    except OSError as exc:
        raise InvalidArgument(f"policy pack {path} cannot be read: {exc.strerror}") from None
    if len(raw) > PACK_BYTES_MAX:
        raise InvalidArgument(f"policy pack {path} is larger than {PACK_BYTES_MAX} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"policy pack {path} is not UTF-8 text") from None
    return parse_pack(load_yaml(text, f"policy pack {path}"), str(path))
