"""Loading and validating the policy pack: the shipped pack's facts, and one clear error (naming
the field at fault and what is allowed) for each kind of mistake an operator can make."""

from __future__ import annotations

import copy
import datetime
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from domicile.errors import InvalidArgument
from domicile.model import Classification
from domicile.policy.pack import PACK_BYTES_MAX, Regime, UnlistedJurisdictions, load_pack, parse_pack

PACK = Path(__file__).resolve().parents[2] / "deploy" / "policy" / "pack.yaml"


@functools.cache
def _raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PACK.read_text())
    return data


def raw() -> dict[str, Any]:
    return copy.deepcopy(_raw())


def law(data: dict[str, Any], law_id: str) -> dict[str, Any]:
    return next(x for x in data["laws"] if x["id"] == law_id)


def adequacy_entry(data: dict[str, Any], country: str) -> dict[str, Any]:
    return next(e for e in law(data, "gdpr")["adequacy"]["countries"] if e["country"] == country)


# -- the shipped pack -------------------------------------------------------------------------


def test_the_shipped_pack_loads_with_its_version_and_regions():
    pack = load_pack(PACK)
    assert pack.version == "2026-12-01.1"
    assert [(r.name, r.country, r.jurisdiction) for r in pack.regions] == [
        ("us-east-1", "US", "US"),
        ("us-west-2", "US", "US"),
        ("eu-west-1", "IE", "EU"),
        ("eu-central-1", "DE", "EU"),
        ("ap-northeast-1", "JP", "JP"),
        ("sa-east-1", "BR", "BR"),
        ("ap-northeast-2", "KR", "KR"),
    ]
    assert pack.region("ap-northeast-2").subdivision == "KR-11"  # type: ignore[union-attr]
    assert pack.region("us-east-1").location == "Northern Virginia"  # type: ignore[union-attr]
    assert pack.region("us-west-2").location == "Oregon"  # type: ignore[union-attr]
    assert pack.unlisted_jurisdictions is UnlistedJurisdictions.REFUSE


def test_the_eea_has_the_27_eu_states_and_iceland_liechtenstein_norway():
    eea = load_pack(PACK).groups["EEA"]
    assert len(eea.members) == 30
    assert {"IS", "LI", "NO", "DE", "IE", "GR"} <= set(eea.members)
    assert "GB" not in eea.members and "CH" not in eea.members
    assert eea.checked == datetime.date(2026, 11, 27) and eea.source.startswith("https://")


def test_the_shipped_laws_and_who_they_cover():
    pack = load_pack(PACK)
    assert {x.id: (x.name, x.regime, x.subjects) for x in pack.laws} == {
        "gdpr": ("GDPR", Regime.TRANSFER_RESTRICTED, ("EEA",)),
        "ccpa": ("CCPA/CPRA", Regime.NO_LOCALIZATION, ("US-CA",)),
        "us": ("US law", Regime.NO_LOCALIZATION, ("US",)),
        "lgpd": ("LGPD", Regime.TRANSFER_RESTRICTED, ("BR",)),
        "appi": ("APPI", Regime.TRANSFER_RESTRICTED, ("JP",)),
        "pipl": ("PIPL", Regime.TRANSFER_RESTRICTED, ("CN",)),
        "ru-152fz": ("152-FZ", Regime.PRIMARY_IN_COUNTRY, ("RU",)),
        "pipa": ("PIPA", Regime.TRANSFER_RESTRICTED, ("KR",)),
        "uk-gdpr": ("UK GDPR", Regime.TRANSFER_RESTRICTED, ("GB",)),
        "fadp": ("FADP", Regime.TRANSFER_RESTRICTED, ("CH",)),
        "dpdp": ("DPDP Act", Regime.TRANSFER_UNLESS_RESTRICTED, ("IN",)),
    }
    assert list(pack.law("pipa").mechanisms) == ["certification", "contract_disclosure", "consent", "treaty"]  # type: ignore[union-attr]
    assert list(pack.law("uk-gdpr").mechanisms) == ["idta", "addendum", "bcr"]  # type: ignore[union-attr]
    assert list(pack.law("fadp").mechanisms) == ["scc", "bcr"]  # type: ignore[union-attr]
    assert list(pack.law("gdpr").mechanisms) == ["scc", "bcr"]  # type: ignore[union-attr]
    assert list(pack.law("appi").mechanisms) == ["equivalent_measures", "consent"]  # type: ignore[union-attr]
    assert list(pack.law("pipl").mechanisms) == ["cac_assessment", "standard_contract", "certification"]  # type: ignore[union-attr]
    assert list(pack.law("ru-152fz").mechanisms) == ["cross_border_notice"]  # type: ignore[union-attr]
    assert len(pack.law("lgpd").mechanisms) == 5  # type: ignore[union-attr]


def test_the_shipped_mechanism_facts():
    pack = load_pack(PACK)
    dpf = pack.recipient_fact("us-east-1", "dpf_certified")
    assert dpf is not None and dpf.value
    assert not pack.recipient_fact("us-west-2", "dpf_certified").value  # type: ignore[union-attr]
    scc = pack.mechanism_fact("sa-east-1", "gdpr", "scc")
    assert scc is not None and scc.value
    brazil = next(a for a in pack.law("gdpr").adequacy if a.country == "BR")  # type: ignore[union-attr]
    assert brazil.fact.value and "2026/179" in brazil.decision


def test_every_fact_in_the_shipped_pack_has_a_checked_date_and_a_source():
    pack = load_pack(PACK)
    facts = [a.fact for x in pack.laws for a in (*x.adequacy, *x.restrictions)]
    for dest in pack.destinations.values():
        facts += list(dest.recipient.values()) + list(dest.mechanisms.values())
    assert len(facts) > 20
    assert all(isinstance(fact.checked, datetime.date) and fact.source for fact in facts)
    assert all(x.checked and x.source for x in pack.laws)
    assert all(g.checked and g.source for g in pack.groups.values())


def test_the_classifications_say_which_are_personal_data():
    pack = load_pack(PACK)
    personal = {c.label for c, rule in pack.classifications.items() if rule.personal_data}
    assert personal == {"personal", "sensitive_personal", "financial"}
    assert Classification.UNSPECIFIED not in pack.classifications


def test_a_law_lookup_prefers_the_subdivision_then_the_country_then_the_group():
    from domicile.policy.jurisdiction import parse_jurisdiction

    pack = load_pack(PACK)

    def law_id(code: str) -> str | None:
        found = pack.law_for(parse_jurisdiction(code))
        return found.id if found else None

    assert law_id("US-CA") == "ccpa"
    assert law_id("US-TX") == "us"
    assert law_id("DE") == "gdpr"
    assert law_id("DE-BY") == "gdpr"
    assert law_id("NO") == "gdpr"
    assert law_id("GB") == "uk-gdpr"
    assert law_id("SG") is None


# -- validation errors ------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: list[Any], value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _delete(path: list[Any]) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _adequacy(country: str, key: str, value: Any = None, delete: bool = False) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        entry = adequacy_entry(data, country)
        if delete:
            del entry[key]
        else:
            entry[key] = value

    return mutate


def _law(law_id: str, key: str, value: Any = None, delete: bool = False) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        entry = law(data, law_id)
        if delete:
            del entry[key]
        else:
            entry[key] = value

    return mutate


def _append_adequacy(entry: dict[str, Any]) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        law(data, "gdpr")["adequacy"]["countries"].append(
            {"in_force": True, "checked": "2026-11-27", "source": "s", "name": "n", "decision": "d", **entry}
        )

    return mutate


FACT = {"value": True, "checked": "2026-11-27", "source": "s"}

# (id, mutation, fragments the message must contain)
ERRORS: list[tuple[str, Mutation, list[str]]] = [
    ("missing-version", _delete(["version"]), ["missing required field 'version'"]),
    ("version-as-date", _set(["version"], datetime.date(2026, 11, 27)), ["version", "quoted"]),
    ("version-with-spaces", _set(["version"], "v 1"), ["version: got 'v 1'"]),
    ("unknown-top-level", _set(["polcy"], 1), ["unknown field 'polcy'", "allowed fields: version"]),
    ("no-regions", _set(["regions"], []), ["regions: must list at least one region"]),
    ("region-not-a-mapping", _set(["regions", 0], "us-east-1"), ["regions[0]: expected a mapping"]),
    ("region-bad-name", _set(["regions", 0, "name"], "US East"), ["regions[0].name", "invalid region name"]),
    ("region-twice", _set(["regions", 1, "name"], "us-east-1"), ["region us-east-1 is listed twice"]),
    ("region-uk", _set(["regions", 2, "country"], "UK"), ["regions[2] (eu-west-1).country", "use GB"]),
    (
        "region-lower-case",
        _set(["regions", 2, "country"], "ie"),
        ["regions[2] (eu-west-1).country", "upper-case"],
    ),
    (
        "region-subdivision-of-another-country",
        _set(["regions", 3, "subdivision"], "US-VA"),
        ["regions[3] (eu-central-1).subdivision", "ISO 3166-2 code of DE"],
    ),
    ("region-no-jurisdiction", _delete(["regions", 0, "jurisdiction"]), ["(us-east-1)", "'jurisdiction'"]),
    (
        "region-unknown-field",
        _set(["regions", 0, "zone"], "a"),
        ["unknown field 'zone'", "allowed fields: name"],
    ),
    (
        "norway-unquoted",
        _set(["country_groups", "EEA", "members", 29], False),
        ["country_groups.EEA.members[29]", 'as "NO"'],
    ),
    ("group-duplicate", _set(["country_groups", "EEA", "members", 29], "DE"), ["DE is listed twice"]),
    (
        "group-short-name",
        _set(["country_groups", "EU"], {"members": ["DE"]}),
        ["country_groups.EU", "3 to 32"],
    ),
    ("group-no-source", _delete(["country_groups", "EEA", "source"]), ["country_groups.EEA", "'source'"]),
    (
        "missing-classification",
        _delete(["classifications", "financial"]),
        ["missing classification 'financial'", "needs a rule"],
    ),
    ("unknown-classification", _set(["classifications", "secret"], {}), ["unknown field 'secret'", "public"]),
    (
        "classification-personal-data-missing",
        _set(["classifications", "public"], {}),
        ["classifications.public", "'personal_data' (true or false)"],
    ),
    (
        "classification-personal-data-text",
        _set(["classifications", "public", "personal_data"], "no"),
        ["classifications.public.personal_data", "expected true or false"],
    ),
    (
        "redact-without-fields",
        _set(["classifications", "personal", "on_read_refused"], "redact"),
        ["classifications.personal: missing required field 'redact_fields'"],
    ),
    (
        "redact-unknown-field",
        _set(
            ["classifications", "personal"],
            {"personal_data": True, "on_read_refused": "redact", "redact_fields": ["key"]},
        ),
        ["cannot redact 'key'", "redactable: value, subject_id"],
    ),
    (
        "read-refused-mode",
        _set(["classifications", "personal", "on_read_refused"], "hide"),
        ["on_read_refused: got 'hide'; allowed: refuse, redact"],
    ),
    (
        "classification-unknown-region",
        _set(["classifications", "personal", "regions"], ["eu-north-1"]),
        ["classifications.personal.regions", "unknown region 'eu-north-1'"],
    ),
    ("unlisted-bad", _set(["unlisted_jurisdictions"], "maybe"), ["unlisted_jurisdictions: got 'maybe'"]),
    ("no-laws", _set(["laws"], []), ["laws: must list at least one law"]),
    (
        "law-bad-regime",
        _law("gdpr", "regime", "strict"),
        ["laws[0] (gdpr).regime", "allowed: transfer_restricted"],
    ),
    ("law-bad-id", _law("gdpr", "id", "GDPR"), ["laws[0].id", "invalid identifier 'GDPR'"]),
    ("law-duplicate-id", _law("ccpa", "id", "gdpr"), ["law id 'gdpr' is used twice"]),
    (
        "law-missing-refusal-basis",
        _law("lgpd", "refusal_basis", delete=True),
        ["(lgpd)", "missing required field 'refusal_basis' for regime transfer_restricted"],
    ),
    (
        "law-field-of-another-regime",
        _law("ccpa", "home", ["US"]),
        ["(ccpa).home", "does not apply to regime no_localization"],
    ),
    (
        "adequacy-for-primary-in-country",
        _law("ru-152fz", "adequacy", {"basis": "x", "countries": []}),
        ["(ru-152fz).adequacy", "does not apply to regime primary_in_country"],
    ),
    (
        "law-unknown-group",
        _law("gdpr", "subjects", ["EEAA"]),
        ["subjects[0]", "unknown country group 'EEAA'"],
    ),
    ("law-bad-subject", _law("lgpd", "subjects", ["BRA"]), ["subjects[0]", "unknown country group 'BRA'"]),
    ("law-subject-typo", _law("lgpd", "subjects", ["Br"]), ["(lgpd).subjects[0]", "upper-case"]),
    (
        "two-laws-one-subject",
        _law("lgpd", "subjects", ["BR", "DE"]),
        ["subjects DE are claimed by both gdpr and lgpd", "exactly one law"],
    ),
    (
        "law-no-checked-date",
        _law("pipl", "checked", delete=True),
        ["(pipl)", "missing required field 'checked'"],
    ),
    (
        "adequacy-missing-in-force",
        _adequacy("BR", "in_force", delete=True),
        ["adequacy.countries[14] (BR)", "missing required field 'in_force' (true or false)"],
    ),
    (
        "adequacy-in-force-text",
        _adequacy("BR", "in_force", "adopted"),
        ["(BR).in_force", "expected true or false, got 'adopted'"],
    ),
    (
        "adequacy-bad-date",
        _adequacy("BR", "checked", "January 2026"),
        ["(BR).checked", "expected a date as YYYY-MM-DD"],
    ),
    (
        "adequacy-no-source",
        _adequacy("JP", "source", delete=True),
        ["(JP)", "missing required field 'source'"],
    ),
    ("adequacy-empty-source", _adequacy("JP", "source", "  "), ["(JP).source", "must not be empty"]),
    (
        "adequacy-inside-home",
        _append_adequacy({"country": "FR"}),
        ["(FR)", "FR is inside the law's home area"],
    ),
    (
        "adequacy-twice",
        _append_adequacy({"country": "JP"}),
        ["(JP)", "JP is already covered by the entry for JP"],
    ),
    ("adequacy-unknown-field", _adequacy("JP", "inforce", True), ["unknown field 'inforce'", "in_force"]),
    ("adequacy-bad-requires", _adequacy("US", "requires", "DPF!"), ["(US).requires", "invalid identifier"]),
    ("mechanism-no-basis", _law("gdpr", "mechanisms", {"scc": ""}), ["mechanisms.scc", "legal basis"]),
    (
        "destination-unknown-region",
        _set(["destinations", "eu-north-1"], {}),
        ["destinations.eu-north-1", "unknown region 'eu-north-1'"],
    ),
    (
        "destination-unknown-law",
        _set(["destinations", "us-east-1", "mechanisms", "hipaa"], {"baa": FACT}),
        ["destinations.us-east-1.mechanisms.hipaa", "unknown law 'hipaa'"],
    ),
    (
        "destination-mechanism-the-law-does-not-accept",
        _set(["destinations", "us-east-1", "mechanisms", "gdpr", "dpf"], FACT),
        ["mechanisms.gdpr.dpf", "GDPR accepts no mechanism 'dpf'; it accepts: scc, bcr"],
    ),
    (
        "destination-recipient-fact-typo",
        _set(["destinations", "us-east-1", "recipient", "dpf_certifed"], FACT),
        ["recipient.dpf_certifed", "no law relies on", "commercial_organisation, dpf_certified"],
    ),
    (
        "fact-without-value",
        _set(
            ["destinations", "sa-east-1", "mechanisms", "gdpr", "scc"],
            {"checked": "2026-11-27", "source": "s"},
        ),
        ["mechanisms.gdpr.scc", "missing required field 'value'"],
    ),
    (
        "fact-without-date",
        _set(["destinations", "sa-east-1", "mechanisms", "gdpr", "scc"], {"value": True, "source": "s"}),
        ["mechanisms.gdpr.scc", "missing required field 'checked'"],
    ),
    (
        "fact-unknown-field",
        _set(["destinations", "sa-east-1", "mechanisms", "gdpr", "scc"], {**FACT, "signed": True}),
        ["unknown field 'signed'"],
    ),
    (
        "restrictions-on-a-restricted-regime",
        _law("gdpr", "restrictions", {"basis": "b", "countries": []}),
        ["(gdpr).restrictions", "does not apply to regime transfer_restricted"],
    ),
    (
        "restrictions-missing",
        _law("dpdp", "restrictions", delete=True),
        ["(dpdp)", "missing required field 'restrictions'"],
    ),
    (
        "restriction-with-a-recipient-condition",
        _law(
            "dpdp",
            "restrictions",
            {"basis": "b", "countries": [{"country": "US", "requires": "dpf_certified"}]},
        ),
        ["(dpdp).restrictions.countries[0].requires", "does not apply to a restriction"],
    ),
    (
        "restriction-without-a-date",
        _law(
            "dpdp",
            "restrictions",
            {
                "basis": "b",
                "countries": [
                    {"country": "US", "name": "n", "decision": "d", "in_force": True, "source": "s"}
                ],
            },
        ),
        ["(US)", "missing required field 'checked'"],
    ),
    (
        "fact-as-text",
        _set(["destinations", "sa-east-1", "mechanisms", "gdpr", "scc"], "yes"),
        ["mechanisms.gdpr.scc: expected a mapping, got str"],
    ),
]


@pytest.mark.parametrize(("mutation", "fragments"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_a_bad_pack_is_refused_with_a_message_naming_the_field(mutation, fragments):
    data = raw()
    mutation(data)
    with pytest.raises(InvalidArgument) as info:
        parse_pack(data, "pack.yaml")
    message = str(info.value)
    assert message.startswith("pack.yaml"), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_parsing_does_not_change_the_data_it_was_given():
    data = raw()
    parse_pack(data, "pack.yaml")
    assert data == _raw()


def test_the_top_level_must_be_a_mapping():
    with pytest.raises(InvalidArgument, match=r"pack\.yaml: expected a mapping, got list"):
        parse_pack([1, 2], "pack.yaml")


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_pack(tmp_path / "nope.yaml")


def test_invalid_yaml_is_reported(tmp_path):
    path = tmp_path / "pack.yaml"
    path.write_text("version: [unclosed\n")
    with pytest.raises(InvalidArgument, match="is not valid YAML"):
        load_pack(path)


def test_a_file_that_is_not_utf8_is_reported(tmp_path):
    path = tmp_path / "pack.yaml"
    path.write_bytes(b"version: \xff\xfe\n")
    with pytest.raises(InvalidArgument, match="is not UTF-8 text"):
        load_pack(path)


def test_an_oversized_file_is_refused(tmp_path):
    path = tmp_path / "pack.yaml"
    path.write_bytes(b"#" * (PACK_BYTES_MAX + 1))
    with pytest.raises(InvalidArgument, match=re.escape(f"larger than {PACK_BYTES_MAX} bytes")):
        load_pack(path)


def test_a_loaded_pack_names_its_file_in_errors(tmp_path):
    data = raw()
    adequacy_entry(data, "BR")["in_force"] = "yes please"
    path = tmp_path / "pack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(InvalidArgument) as info:
        load_pack(path)
    assert str(info.value).startswith(f"{path}: laws[0] (gdpr).adequacy.countries[14] (BR).in_force")


def test_a_minimal_pack():
    pack = parse_pack(
        {
            "version": "1",
            "regions": [{"name": "r1", "country": "DE", "jurisdiction": "EU"}],
            "classifications": {
                c.label: {"personal_data": c.strictness >= Classification.PERSONAL.strictness}
                for c in Classification
                if c is not Classification.UNSPECIFIED
            },
            "laws": [
                {
                    "id": "open",
                    "name": "Open",
                    "title": "No restriction",
                    "regime": "no_localization",
                    "subjects": ["DE"],
                    "checked": "2026-01-01",
                    "source": "s",
                    "basis": "none",
                }
            ],
        },
        "mini",
    )
    assert pack.region_names() == ("r1",)
    assert pack.destinations == {} and pack.groups == {}
