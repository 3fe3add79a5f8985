"""Decisions of JurisdictionPolicy over the shipped pack (deploy/policy/pack.yaml), law by law.

Each row names a record (classification, subject jurisdiction), a region, an action, the facts
flipped in a copy of the pack, and the expected outcome, rule and law. The table covers:

GDPR (EEA subjects: DE, FR, IE, and the EFTA states NO, IS, LI)
  - store / replicate / read inside the EEA (eu-west-1, eu-central-1): allowed, gdpr.home
  - Art. 45 adequacy: every one of the 16 entries (Andorra, Argentina, Canada, Faroe Islands,
    Guernsey, Israel, Isle of Man, Japan, Jersey, New Zealand, Korea, Switzerland, UK, Uruguay,
    Brazil, US) allows a region in that country, and refuses it once switched off; countries
    without a decision (AU, IN, SG, CN) are refused
  - Canada only for commercial organisations, the US only for DPF-certified recipients:
    recipient fact recorded yes / recorded no / not recorded
  - us-east-1 (DPF yes): allowed by adequacy; DPF off: refused; DPF off with SCC or BCR
    recorded: allowed by that mechanism; US adequacy switched off: refused
  - us-west-2 (DPF recorded no): refused; DPF switched on: allowed
  - sa-east-1: Brazil adequacy on: allowed by adequacy; off: allowed by the recorded SCC;
    off and SCC off: refused
  - reads from outside the EEA are transfers: read from us-west-2 refused, from us-east-1 and
    ap-northeast-1 allowed by adequacy
  - sensitive_personal and financial follow the same rules as personal
CCPA/CPRA (US-CA): every region, every action allowed (no localization); other US states and
  US fall back to the US entry (no localization)
LGPD (BR): home sa-east-1; EEA regions by the ANPD adequacy decision (and refused when it is
  switched off); us-east-1 refused until one of the five Art. 33 mechanisms is recorded (each
  switched on in turn); ap-northeast-1 refused
APPI (JP): home ap-northeast-1; EEA regions and a UK region by PPC designation (refused when
  switched off); us-east-1 and sa-east-1 refused until consent or equivalent measures are
  recorded (each switched on in turn)
PIPA (KR): home ap-northeast-2; EEA regions by the PIPC's recognition of equivalence (refused
  when switched off); other regions refused until one of the four Art. 28-8(1) mechanisms is
  recorded (each switched on in turn; a consent recorded as no stays refused)
UK GDPR (GB): EEA, Japan, Korea regions by UK adequacy regulations (each switched off in turn);
  the US only for recipients in the UK Extension to the DPF (EU-US certification alone is not
  enough); sa-east-1 (no UK decision for Brazil) refused until the IDTA, the Addendum or BCRs are
  recorded; every adequacy entry of PIPA, UK GDPR and FADP switched on and off
FADP (CH): EEA regions by DPO Annex 1; the US only for Swiss-US DPF recipients; Japan, Korea and
  Brazil refused until SCCs or BCRs are recorded
DPDP Act (IN): allowed in every region for every action; a country restricted by notification
  is refused (switched on and off), and a restriction of the EEA covers its members
PIPL (CN): refused in every region, for every action; a region in China allowed; a region
  abroad allowed once a CAC assessment, a filed standard contract or a certification is
  recorded (each in turn)
152-FZ (RU): a store outside Russia is refused even with a cross-border notice recorded; a
  replicated or read copy abroad is refused without the notice and allowed with it; a region
  in Russia is allowed
Public, internal and confidential data: allowed in every region for every action, whatever the
  subject's jurisdiction (even CN, RU, none)
Edge cases: no classification (judged as personal), no or malformed subject jurisdiction,
  unlisted jurisdiction (refuse, and allow when the pack says so), unknown region, unknown
  action, classification confined to regions, reads answered redacted, allowed_regions, the
  evidence quoted (checked date and source), cluster/pack consistency, bounded cache.
Randomized: 2,000 random records (any classification, valid and malformed jurisdictions, known
  and unknown regions) get decisions without errors, equal with and without a tiny cache, and
  consistent with allowed_regions. It prints POLICY_SEED; set it to replay.
"""

from __future__ import annotations

import copy
import functools
import os
import random
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from domicile.cluster import load_cluster, parse_cluster
from domicile.errors import InvalidArgument
from domicile.model import Classification
from domicile.policy import Action, Decision, PlacementPolicy, RecordFacts
from domicile.policy.engine import JurisdictionPolicy, check_facts
from domicile.policy.pack import parse_pack

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "policy" / "pack.yaml"
CLUSTER = ROOT / "deploy" / "cluster.yaml"

STORE, REPLICATE, READ = Action.STORE, Action.REPLICATE, Action.READ
ACTIONS = (STORE, REPLICATE, READ)
REGIONS = (
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-northeast-1",
    "sa-east-1",
    "ap-northeast-2",
)
P = Classification.PERSONAL


# -- flipping facts in a copy of the pack -------------------------------------------------------

Flip = tuple[Any, ...]


@functools.cache
def raw_pack() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PACK.read_text())
    return data


def _fact(value: bool) -> dict[str, Any]:
    return {"value": value, "checked": "2026-11-27", "source": "test"}


def _law(data: dict[str, Any], law_id: str) -> dict[str, Any]:
    return next(law for law in data["laws"] if law["id"] == law_id)


def apply_flip(data: dict[str, Any], flip: Flip) -> None:
    kind, *args = flip
    if kind == "adequacy":  # ("adequacy", law, country, in_force)
        law_id, country, in_force = args
        entry = next(e for e in _law(data, law_id)["adequacy"]["countries"] if e["country"] == country)
        entry["in_force"] = in_force
    elif kind == "mechanism":  # ("mechanism", region, law, kind, value)
        region, law_id, mech, value = args
        dest = data.setdefault("destinations", {}).setdefault(region, {})
        dest.setdefault("mechanisms", {}).setdefault(law_id, {})[mech] = _fact(value)
    elif kind == "recipient":  # ("recipient", region, fact, value | None to remove)
        region, name, value = args
        recipient = data.setdefault("destinations", {}).setdefault(region, {}).setdefault("recipient", {})
        if value is None:
            recipient.pop(name, None)
        else:
            recipient[name] = _fact(value)
    elif kind == "region":  # ("region", name, country)
        name, country = args
        data["regions"].append({"name": name, "country": country, "jurisdiction": country})
    elif kind == "classification":  # ("classification", label, ((field, value), ...))
        label, fields = args
        changes = {k: list(v) if isinstance(v, tuple) else v for k, v in fields}
        data["classifications"][label] = {**data["classifications"][label], **changes}
    elif kind == "restriction":  # ("restriction", law, country, in_force)
        law_id, country, in_force = args
        _law(data, law_id)["restrictions"]["countries"].append(
            {
                "country": country,
                "name": f"country {country}",
                "decision": "test notification",
                "in_force": in_force,
                "checked": "2026-12-01",
                "source": "test",
            }
        )
    elif kind == "top":  # ("top", key, value)
        key, value = args
        data[key] = value
    else:
        raise ValueError(f"unknown flip {flip!r}")


@functools.cache
def policy(flips: tuple[Flip, ...] = ()) -> JurisdictionPolicy:
    data = copy.deepcopy(raw_pack())
    for flip in flips:
        apply_flip(data, flip)
    return JurisdictionPolicy(parse_pack(data, "test pack"))


def decide(
    classification: Classification,
    jurisdiction: str,
    region: str,
    action: str,
    flips: tuple[Flip, ...] = (),
) -> Decision:
    return policy(flips).decide(RecordFacts("ns", classification, "subject-1", jurisdiction), region, action)


# -- the table ------------------------------------------------------------------------------


def mech(region: str, law: str, kind: str, value: bool = True) -> Flip:
    return ("mechanism", region, law, kind, value)


def adequacy(law: str, country: str, in_force: bool) -> Flip:
    return ("adequacy", law, country, in_force)


def recipient(region: str, fact: str, value: bool | None) -> Flip:
    return ("recipient", region, fact, value)


def extra_region(name: str, country: str) -> Flip:
    return ("region", name, country)


def restriction(law: str, country: str, in_force: bool) -> Flip:
    return ("restriction", law, country, in_force)


DPF_OFF = recipient("us-east-1", "dpf_certified", False)
BR_ADEQUACY_OFF = adequacy("gdpr", "BR", False)
SA_SCC_OFF = mech("sa-east-1", "gdpr", "scc", False)
LAW_NAMES = {
    "gdpr": "GDPR",
    "ccpa": "CCPA/CPRA",
    "us": "US law",
    "lgpd": "LGPD",
    "appi": "APPI",
    "pipl": "PIPL",
    "ru-152fz": "152-FZ",
    "pipa": "PIPA",
    "uk-gdpr": "UK GDPR",
    "fadp": "FADP",
    "dpdp": "DPDP Act",
    "classification": "",
}


class Row(NamedTuple):
    classification: Classification
    jurisdiction: str
    region: str
    action: str
    outcome: str
    rule: str
    flips: tuple[Flip, ...]

    @property
    def law(self) -> str:
        return LAW_NAMES[self.rule.split(".")[0]]


def R(c: Classification, j: str, region: str, action: str, expect: str, *flips: Flip) -> Row:
    """A row; `expect` is "<outcome> <rule>"."""
    outcome, rule = expect.split()
    return Row(c, j, region, action, outcome, rule, flips)


GDPR_NO = "refuse gdpr.no-transfer-basis"
PIPA_NO = "refuse pipa.no-transfer-basis"
UK_NO = "refuse uk-gdpr.no-transfer-basis"
FADP_NO = "refuse fadp.no-transfer-basis"
TABLE: list[Row] = [
    # GDPR: inside the EEA
    R(P, "DE", "eu-west-1", STORE, "allow gdpr.home"),
    R(P, "DE", "eu-central-1", REPLICATE, "allow gdpr.home"),
    R(P, "FR", "eu-central-1", READ, "allow gdpr.home"),
    R(P, "IE", "eu-west-1", STORE, "allow gdpr.home"),
    R(P, "NO", "eu-west-1", STORE, "allow gdpr.home"),
    R(P, "IS", "eu-central-1", REPLICATE, "allow gdpr.home"),
    R(P, "LI", "eu-central-1", READ, "allow gdpr.home"),
    # GDPR: Japan by adequacy
    R(P, "DE", "ap-northeast-1", REPLICATE, "allow gdpr.adequacy"),
    R(P, "DE", "ap-northeast-1", READ, "allow gdpr.adequacy"),
    R(P, "DE", "ap-northeast-1", REPLICATE, GDPR_NO, adequacy("gdpr", "JP", False)),
    # GDPR: the US only for DPF-certified recipients, else an Art. 46 mechanism
    R(P, "DE", "us-east-1", STORE, "allow gdpr.adequacy"),
    R(P, "DE", "us-east-1", REPLICATE, "allow gdpr.adequacy"),
    R(P, "DE", "us-east-1", READ, "allow gdpr.adequacy"),
    R(P, "DE", "us-east-1", REPLICATE, GDPR_NO, DPF_OFF),
    R(P, "DE", "us-east-1", REPLICATE, GDPR_NO, recipient("us-east-1", "dpf_certified", None)),
    R(P, "DE", "us-east-1", REPLICATE, "allow gdpr.mechanism.scc", DPF_OFF, mech("us-east-1", "gdpr", "scc")),
    R(P, "DE", "us-east-1", REPLICATE, "allow gdpr.mechanism.bcr", DPF_OFF, mech("us-east-1", "gdpr", "bcr")),
    R(P, "DE", "us-east-1", REPLICATE, GDPR_NO, adequacy("gdpr", "US", False)),
    R(P, "DE", "us-west-2", STORE, GDPR_NO),
    R(P, "DE", "us-west-2", REPLICATE, GDPR_NO),
    R(P, "DE", "us-west-2", REPLICATE, "allow gdpr.adequacy", recipient("us-west-2", "dpf_certified", True)),
    # GDPR: a read from outside the EEA is a transfer too
    R(P, "DE", "us-west-2", READ, GDPR_NO),
    R(P, "FR", "us-east-1", READ, GDPR_NO, DPF_OFF),
    # GDPR: Brazil's adequacy as a switch, with the SCC recorded for sa-east-1 behind it
    R(P, "DE", "sa-east-1", STORE, "allow gdpr.adequacy"),
    R(P, "DE", "sa-east-1", REPLICATE, "allow gdpr.mechanism.scc", BR_ADEQUACY_OFF),
    R(P, "DE", "sa-east-1", REPLICATE, GDPR_NO, BR_ADEQUACY_OFF, SA_SCC_OFF),
    R(P, "DE", "sa-east-1", READ, GDPR_NO, BR_ADEQUACY_OFF, SA_SCC_OFF),
    # GDPR: the other personal classifications follow the same law
    R(Classification.SENSITIVE_PERSONAL, "DE", "us-west-2", REPLICATE, GDPR_NO),
    R(Classification.FINANCIAL, "DE", "us-west-2", STORE, GDPR_NO),
    R(Classification.FINANCIAL, "DE", "eu-central-1", STORE, "allow gdpr.home"),
    R(Classification.SENSITIVE_PERSONAL, "DE", "ap-northeast-1", READ, "allow gdpr.adequacy"),
    # CCPA/CPRA and the rest of the US: no localization
    R(P, "US-CA", "eu-west-1", STORE, "allow ccpa.no-localization"),
    R(Classification.SENSITIVE_PERSONAL, "US-CA", "sa-east-1", REPLICATE, "allow ccpa.no-localization"),
    R(P, "US-NY", "ap-northeast-1", STORE, "allow us.no-localization"),
    R(Classification.FINANCIAL, "US", "eu-central-1", READ, "allow us.no-localization"),
    # LGPD
    R(P, "BR", "sa-east-1", STORE, "allow lgpd.home"),
    R(P, "BR", "eu-west-1", REPLICATE, "allow lgpd.adequacy"),
    R(P, "BR", "eu-central-1", READ, "allow lgpd.adequacy"),
    R(P, "BR", "eu-west-1", REPLICATE, "refuse lgpd.no-transfer-basis", adequacy("lgpd", "EEA", False)),
    R(P, "BR", "us-east-1", STORE, "refuse lgpd.no-transfer-basis"),
    R(P, "BR", "us-east-1", REPLICATE, "refuse lgpd.no-transfer-basis"),
    R(P, "BR", "ap-northeast-1", READ, "refuse lgpd.no-transfer-basis"),
    *[
        R(P, "BR", "us-east-1", REPLICATE, f"allow lgpd.mechanism.{kind}", mech("us-east-1", "lgpd", kind))
        for kind in (
            "standard_clauses",
            "specific_clauses",
            "global_corporate_rules",
            "certification",
            "specific_consent",
        )
    ],
    # APPI
    R(P, "JP", "ap-northeast-1", STORE, "allow appi.home"),
    R(P, "JP", "eu-central-1", REPLICATE, "allow appi.adequacy"),
    R(P, "JP", "eu-west-1", READ, "allow appi.adequacy"),
    R(P, "JP", "uk-south-1", REPLICATE, "allow appi.adequacy", extra_region("uk-south-1", "GB")),
    R(P, "JP", "eu-central-1", REPLICATE, "refuse appi.no-transfer-basis", adequacy("appi", "EEA", False)),
    R(P, "JP", "us-east-1", STORE, "refuse appi.no-transfer-basis"),
    R(P, "JP", "us-east-1", READ, "refuse appi.no-transfer-basis"),
    R(P, "JP", "sa-east-1", REPLICATE, "refuse appi.no-transfer-basis"),
    R(P, "JP", "us-east-1", REPLICATE, "allow appi.mechanism.consent", mech("us-east-1", "appi", "consent")),
    R(
        P,
        "JP",
        "us-east-1",
        REPLICATE,
        "allow appi.mechanism.equivalent_measures",
        mech("us-east-1", "appi", "equivalent_measures"),
    ),
    R(P, "JP", "sa-east-1", STORE, "allow appi.mechanism.consent", mech("sa-east-1", "appi", "consent")),
    # PIPL
    *[
        R(P, "CN", region, action, "refuse pipl.no-transfer-basis")
        for region in REGIONS
        for action in ACTIONS
    ],
    R(P, "CN", "cn-north-1", STORE, "allow pipl.home", extra_region("cn-north-1", "CN")),
    *[
        R(
            P,
            "CN",
            "ap-northeast-1",
            REPLICATE,
            f"allow pipl.mechanism.{kind}",
            mech("ap-northeast-1", "pipl", kind),
        )
        for kind in ("cac_assessment", "standard_contract", "certification")
    ],
    R(
        P,
        "CN",
        "ap-northeast-1",
        REPLICATE,
        "refuse pipl.no-transfer-basis",
        mech("ap-northeast-1", "pipl", "standard_contract", False),
    ),
    # Russia 152-FZ: no primary abroad, whatever is recorded; copies abroad only with a notice
    *[R(P, "RU", region, STORE, "refuse ru-152fz.primary-outside") for region in REGIONS],
    R(
        P,
        "RU",
        "eu-west-1",
        STORE,
        "refuse ru-152fz.primary-outside",
        mech("eu-west-1", "ru-152fz", "cross_border_notice"),
    ),
    R(P, "RU", "eu-west-1", REPLICATE, "refuse ru-152fz.no-transfer-basis"),
    R(P, "RU", "eu-west-1", READ, "refuse ru-152fz.no-transfer-basis"),
    R(
        P,
        "RU",
        "eu-west-1",
        REPLICATE,
        "allow ru-152fz.mechanism.cross_border_notice",
        mech("eu-west-1", "ru-152fz", "cross_border_notice"),
    ),
    R(P, "RU", "ru-central-1", STORE, "allow ru-152fz.home", extra_region("ru-central-1", "RU")),
    # PIPA (KR): home in Seoul; the EEA by the PIPC's recognition; elsewhere one Art. 28-8(1)
    # mechanism recorded for the destination
    R(P, "KR", "ap-northeast-2", STORE, "allow pipa.home"),
    R(Classification.FINANCIAL, "KR", "ap-northeast-2", READ, "allow pipa.home"),
    R(P, "KR", "eu-west-1", REPLICATE, "allow pipa.adequacy"),
    R(P, "KR", "eu-central-1", READ, "allow pipa.adequacy"),
    R(P, "KR", "eu-west-1", REPLICATE, PIPA_NO, adequacy("pipa", "EEA", False)),
    R(P, "KR", "ap-northeast-1", STORE, PIPA_NO),
    R(P, "KR", "us-east-1", REPLICATE, PIPA_NO),
    R(P, "KR", "us-west-2", READ, PIPA_NO),
    R(P, "KR", "sa-east-1", REPLICATE, PIPA_NO),
    *[
        R(
            P,
            "KR",
            "ap-northeast-1",
            REPLICATE,
            f"allow pipa.mechanism.{kind}",
            mech("ap-northeast-1", "pipa", kind),
        )
        for kind in ("certification", "contract_disclosure", "consent", "treaty")
    ],
    R(P, "KR", "us-east-1", STORE, PIPA_NO, mech("us-east-1", "pipa", "consent", False)),
    R(
        P,
        "KR",
        "us-east-1",
        STORE,
        "allow pipa.mechanism.contract_disclosure",
        mech("us-east-1", "pipa", "contract_disclosure"),
    ),
    # UK GDPR (GB): the UK's adequacy regulations ("data bridges"); the US only for recipients
    # certified under the UK Extension to the EU-US DPF
    R(P, "GB", "uk-south-1", STORE, "allow uk-gdpr.home", extra_region("uk-south-1", "GB")),
    R(P, "GB", "eu-west-1", STORE, "allow uk-gdpr.adequacy"),
    R(P, "GB", "eu-central-1", REPLICATE, "allow uk-gdpr.adequacy"),
    R(P, "GB", "eu-central-1", REPLICATE, UK_NO, adequacy("uk-gdpr", "EEA", False)),
    R(P, "GB", "ap-northeast-1", REPLICATE, "allow uk-gdpr.adequacy"),
    R(P, "GB", "ap-northeast-1", REPLICATE, UK_NO, adequacy("uk-gdpr", "JP", False)),
    R(P, "GB", "ap-northeast-2", READ, "allow uk-gdpr.adequacy"),
    R(P, "GB", "ap-northeast-2", READ, UK_NO, adequacy("uk-gdpr", "KR", False)),
    R(P, "GB", "us-east-1", REPLICATE, "allow uk-gdpr.adequacy"),
    R(P, "GB", "us-east-1", REPLICATE, UK_NO, recipient("us-east-1", "dpf_uk_extension", False)),
    R(P, "GB", "us-east-1", REPLICATE, UK_NO, recipient("us-east-1", "dpf_uk_extension", None)),
    R(P, "GB", "us-east-1", REPLICATE, UK_NO, adequacy("uk-gdpr", "US", False)),
    # the EU-US certification alone is not the UK Extension
    R(P, "GB", "us-west-2", REPLICATE, UK_NO, recipient("us-west-2", "dpf_certified", True)),
    R(
        P,
        "GB",
        "us-west-2",
        REPLICATE,
        "allow uk-gdpr.adequacy",
        recipient("us-west-2", "dpf_uk_extension", True),
    ),
    R(P, "GB", "sa-east-1", STORE, UK_NO),
    *[
        R(
            P,
            "GB",
            "sa-east-1",
            REPLICATE,
            f"allow uk-gdpr.mechanism.{kind}",
            mech("sa-east-1", "uk-gdpr", kind),
        )
        for kind in ("idta", "addendum", "bcr")
    ],
    # FADP (CH): the Federal Council's list (DPO Annex 1); the US only for Swiss-US DPF
    # recipients; Japan, Korea and Brazil are not on the list
    R(P, "CH", "ch-zurich-1", STORE, "allow fadp.home", extra_region("ch-zurich-1", "CH")),
    R(P, "CH", "eu-central-1", STORE, "allow fadp.adequacy"),
    R(P, "CH", "eu-west-1", REPLICATE, FADP_NO, adequacy("fadp", "EEA", False)),
    R(P, "CH", "us-east-1", REPLICATE, "allow fadp.adequacy"),
    R(P, "CH", "us-east-1", REPLICATE, FADP_NO, recipient("us-east-1", "swiss_dpf_certified", False)),
    R(P, "CH", "us-east-1", REPLICATE, FADP_NO, adequacy("fadp", "US", False)),
    R(P, "CH", "us-west-2", REPLICATE, FADP_NO, recipient("us-west-2", "dpf_certified", True)),
    R(
        P,
        "CH",
        "us-west-2",
        REPLICATE,
        "allow fadp.adequacy",
        recipient("us-west-2", "swiss_dpf_certified", True),
    ),
    R(P, "CH", "ap-northeast-1", REPLICATE, FADP_NO),
    R(P, "CH", "ap-northeast-2", READ, FADP_NO),
    R(P, "CH", "sa-east-1", STORE, FADP_NO),
    *[
        R(
            P,
            "CH",
            "ap-northeast-2",
            REPLICATE,
            f"allow fadp.mechanism.{kind}",
            mech("ap-northeast-2", "fadp", kind),
        )
        for kind in ("scc", "bcr")
    ],
    # DPDP Act (IN): allowed everywhere until the Central Government restricts a country
    *[R(P, "IN", region, action, "allow dpdp.not-restricted") for region in REGIONS for action in ACTIONS],
    R(P, "IN", "us-east-1", REPLICATE, "refuse dpdp.restricted-country", restriction("dpdp", "US", True)),
    R(P, "IN", "us-west-2", STORE, "refuse dpdp.restricted-country", restriction("dpdp", "US", True)),
    R(P, "IN", "eu-west-1", STORE, "allow dpdp.not-restricted", restriction("dpdp", "US", True)),
    R(P, "IN", "us-east-1", READ, "allow dpdp.not-restricted", restriction("dpdp", "US", False)),
    R(P, "IN", "eu-central-1", STORE, "refuse dpdp.restricted-country", restriction("dpdp", "EEA", True)),
    # Public and internal reference data: everywhere, whatever the subject's jurisdiction
    *[
        R(c, j, region, action, f"allow classification.{c.label}")
        for c in (Classification.PUBLIC, Classification.INTERNAL, Classification.CONFIDENTIAL)
        for j in ("", "DE", "CN", "RU", "KR")
        for region in REGIONS
        for action in ACTIONS
    ],
]


def _row_id(row: Row) -> str:
    flipped = "+".join("-".join(str(x) for x in f[1:]) for f in row.flips)
    return (
        f"{row.classification.label}-{row.jurisdiction or 'none'}-{row.action}-{row.region}"
        f"{'-' + flipped if flipped else ''}-{row.outcome}"
    )


@pytest.mark.parametrize("row", TABLE, ids=[_row_id(r) for r in TABLE])
def test_decision_table(row: Row):
    d = decide(row.classification, row.jurisdiction, row.region, row.action, row.flips)
    assert (d.outcome, d.rule, d.law) == (row.outcome, row.rule, row.law), d.reason
    assert d.allowed == (row.outcome != "refuse")
    assert d.reason
    assert d.basis, "every decision names its legal basis"
    assert (row.region in d.allowed_regions) == (row.outcome == "allow")


# -- the adequacy list, entry by entry ----------------------------------------------------------

ADEQUATE = {
    "AD": "Andorra",
    "AR": "Argentina",
    "CA": "Canada",
    "FO": "the Faroe Islands",
    "GG": "Guernsey",
    "IL": "Israel",
    "IM": "the Isle of Man",
    "JP": "Japan",
    "JE": "Jersey",
    "NZ": "New Zealand",
    "KR": "the Republic of Korea",
    "CH": "Switzerland",
    "GB": "the United Kingdom",
    "UY": "Uruguay",
    "BR": "Brazil",
    "US": "the United States",
}
RECIPIENT_CONDITION = {"CA": "commercial_organisation", "US": "dpf_certified"}


def test_the_pack_lists_exactly_the_gdpr_adequacy_decisions():
    gdpr = policy().pack.law("gdpr")
    assert gdpr is not None
    assert {a.country: a.name for a in gdpr.adequacy} == ADEQUATE
    assert {a.country: a.requires for a in gdpr.adequacy if a.requires} == RECIPIENT_CONDITION
    assert all(a.fact.value and a.fact.source and a.fact.checked for a in gdpr.adequacy)


@pytest.mark.parametrize("country", sorted(ADEQUATE))
@pytest.mark.parametrize("in_force", [True, False])
def test_each_gdpr_adequacy_decision_switched_on_and_off(country, in_force):
    region = "xx-test-1"
    flips: tuple[Flip, ...] = (("region", region, country), ("adequacy", "gdpr", country, in_force))
    if country in RECIPIENT_CONDITION:
        flips += (("recipient", region, RECIPIENT_CONDITION[country], True),)
    d = decide(P, "DE", region, REPLICATE, flips)
    if in_force:
        assert (d.outcome, d.rule) == ("allow", "gdpr.adequacy"), d.reason
        assert ADEQUATE[country] in d.reason
        assert d.basis.startswith("Art. 45")
        assert any("in force: yes (checked 2026-11-27" in e for e in d.evidence)
    else:
        assert (d.outcome, d.rule) == ("refuse", "gdpr.no-transfer-basis"), d.reason
        assert "not in force" in d.reason


@pytest.mark.parametrize("country", sorted(RECIPIENT_CONDITION))
@pytest.mark.parametrize("recorded", [False, None])
def test_conditional_adequacy_needs_the_recipient_fact(country, recorded):
    region = "xx-test-1"
    fact = RECIPIENT_CONDITION[country]
    flips: tuple[Flip, ...] = (("region", region, country),)
    if recorded is not None:
        flips += (("recipient", region, fact, recorded),)
    d = decide(P, "DE", region, REPLICATE, flips)
    assert (d.outcome, d.rule) == ("refuse", "gdpr.no-transfer-basis"), d.reason
    assert f"covers only recipients that are {fact}" in d.reason


@pytest.mark.parametrize("country", ["AU", "IN", "SG", "CN", "MX"])
def test_countries_without_adequacy_or_mechanism_are_refused_for_eea_subjects(country):
    d = decide(P, "DE", "xx-test-1", REPLICATE, (("region", "xx-test-1", country),))
    assert (d.outcome, d.rule) == ("refuse", "gdpr.no-transfer-basis"), d.reason
    assert "no GDPR adequacy finding covers" in d.reason
    assert "accepted: scc, bcr" in d.reason
    assert d.basis.startswith("Art. 44")


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("action", ACTIONS)
def test_california_subjects_have_no_localization(region, action):
    d = decide(P, "US-CA", region, action)
    assert (d.outcome, d.rule, d.law) == ("allow", "ccpa.no-localization", "CCPA/CPRA")
    assert "opt out of the sale or sharing" in d.basis
    assert d.allowed_regions == REGIONS


def _adequacy_entries(law_id: str) -> list[tuple[str, str, str, str]]:
    """(law, a country the entry covers, the recipient fact it requires) for each entry."""
    law = policy().pack.law(law_id)
    assert law is not None
    return [(law_id, a.country, (a.members or (a.country,))[0], a.requires) for a in law.adequacy]


NEW_LAW_ADEQUACY = [e for law_id in ("pipa", "uk-gdpr", "fadp") for e in _adequacy_entries(law_id)]
SUBJECT_OF = {"pipa": "KR", "uk-gdpr": "GB", "fadp": "CH"}


@pytest.mark.parametrize(("law_id", "entry", "country", "requires"), NEW_LAW_ADEQUACY)
@pytest.mark.parametrize("in_force", [True, False])
def test_each_new_law_adequacy_entry_switched_on_and_off(law_id, entry, country, requires, in_force):
    region = "xx-test-1"
    flips: tuple[Flip, ...] = (("region", region, country), ("adequacy", law_id, entry, in_force))
    if requires:
        flips += (("recipient", region, requires, True),)
    d = decide(P, SUBJECT_OF[law_id], region, REPLICATE, flips)
    expected = ("allow", f"{law_id}.adequacy") if in_force else ("refuse", f"{law_id}.no-transfer-basis")
    assert (d.outcome, d.rule) == expected, d.reason
    if in_force:
        assert any("in force: yes (checked 2026-12-01" in e for e in d.evidence)
    else:
        assert "not in force" in d.reason


def test_the_new_laws_record_what_could_be_confirmed():
    pack = policy().pack
    assert {a.country for a in pack.law("pipa").adequacy} == {"EEA"}  # type: ignore[union-attr]
    uk = {a.country: a.requires for a in pack.law("uk-gdpr").adequacy}  # type: ignore[union-attr]
    assert uk["US"] == "dpf_uk_extension" and uk["KR"] == "" and "BR" not in uk
    ch = {a.country: a.requires for a in pack.law("fadp").adequacy}  # type: ignore[union-attr]
    assert ch["US"] == "swiss_dpf_certified" and not {"JP", "KR", "BR"} & set(ch)
    dpdp = pack.law("dpdp")
    assert dpdp is not None and dpdp.restrictions == () and "s. 16(1)" in dpdp.basis
    for law_id in ("pipa", "uk-gdpr", "fadp", "dpdp"):
        law = pack.law(law_id)
        assert (
            law is not None and law.source.startswith("https://") and law.checked.isoformat() == "2026-12-01"
        )


def test_a_dpdp_restriction_names_the_notification_and_its_source():
    d = decide(P, "IN", "us-east-1", STORE, (restriction("dpdp", "US", True),))
    assert "country US is restricted (test notification)" in d.reason
    assert d.basis.startswith("s. 16(1): notification")
    assert d.evidence == (
        "DPDP Act restriction of country US in force: yes (checked 2026-12-01; source: test)",
    )
    assert "us-east-1" not in d.allowed_regions and "eu-west-1" in d.allowed_regions
    lifted = decide(P, "IN", "us-east-1", STORE, (restriction("dpdp", "US", False),))
    assert lifted.allowed and any("restriction of country US in force: no" in e for e in lifted.evidence)


# -- what the decision says -------------------------------------------------------------------


def test_a_decision_names_rule_law_basis_and_the_facts_it_used():
    d = decide(P, "DE", "us-east-1", REPLICATE)
    assert d.law == "GDPR"
    assert "2023/1795" in d.basis and "Data Privacy Framework" in d.basis
    assert any(
        e.startswith("us-east-1 recipient dpf_certified: yes (checked 2026-11-27; source: ")
        for e in d.evidence
    )
    assert "dpf_certified" in d.reason


def test_a_refusal_quotes_the_facts_found_false():
    d = decide(P, "DE", "us-west-2", REPLICATE)
    assert any(e.startswith("us-west-2 recipient dpf_certified: no") for e in d.evidence)
    assert "outside the home area (EEA)" in d.reason
    d = decide(P, "DE", "sa-east-1", REPLICATE, (BR_ADEQUACY_OFF, SA_SCC_OFF))
    assert any("adequacy for Brazil in force: no" in e for e in d.evidence)
    assert any("mechanism scc recorded: no" in e for e in d.evidence)


def test_a_mechanism_decision_names_the_mechanism_fact():
    d = decide(P, "DE", "sa-east-1", REPLICATE, (BR_ADEQUACY_OFF,))
    assert d.basis.startswith("Art. 46(2)(c)")
    assert d.evidence == (
        "sa-east-1: GDPR mechanism scc recorded: yes (checked 2026-11-27; "
        "source: contract register (sample value))",
    )


def test_home_decisions_quote_the_group_membership():
    d = decide(P, "DE", "eu-west-1", STORE)
    assert d.evidence[0].startswith("EEA members include IE (checked 2026-11-27; source: ")
    assert d.basis.startswith("Art. 44")


def test_the_russian_refusal_explains_the_primary_database_rule():
    d = decide(P, "RU", "eu-central-1", STORE)
    assert "primary database" in d.reason
    assert "Art. 18(5)" in d.basis
    assert d.allowed_regions == ()


# -- allowed regions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jurisdiction", "action", "expected"),
    [
        (
            "DE",
            STORE,
            ("us-east-1", "eu-west-1", "eu-central-1", "ap-northeast-1", "sa-east-1", "ap-northeast-2"),
        ),
        (
            "DE",
            READ,
            ("us-east-1", "eu-west-1", "eu-central-1", "ap-northeast-1", "sa-east-1", "ap-northeast-2"),
        ),
        ("KR", STORE, ("eu-west-1", "eu-central-1", "ap-northeast-2")),
        ("GB", REPLICATE, ("us-east-1", "eu-west-1", "eu-central-1", "ap-northeast-1", "ap-northeast-2")),
        ("CH", STORE, ("us-east-1", "eu-west-1", "eu-central-1")),
        ("IN", STORE, REGIONS),
        ("BR", STORE, ("eu-west-1", "eu-central-1", "sa-east-1")),
        ("JP", REPLICATE, ("eu-west-1", "eu-central-1", "ap-northeast-1")),
        ("US-CA", STORE, REGIONS),
        ("CN", STORE, ()),
        ("RU", REPLICATE, ()),
        ("", STORE, ()),
    ],
)
def test_allowed_regions(jurisdiction, action, expected):
    facts = RecordFacts("ns", P, "s", jurisdiction)
    assert policy().allowed_regions(facts, action) == expected
    assert policy().decide(facts, "us-west-2", action).allowed_regions == expected


def test_allowed_regions_are_limited_to_the_cluster_regions():
    pack = policy().pack
    narrowed = JurisdictionPolicy(pack, ["eu-central-1", "us-west-2", "sa-east-1"])
    facts = RecordFacts("ns", P, "s", "DE")
    assert narrowed.allowed_regions(facts, STORE) == ("eu-central-1", "sa-east-1")
    # a pack region outside the cluster is still judged, just never proposed
    assert narrowed.decide(facts, "eu-west-1", STORE).allowed


# -- edge cases -------------------------------------------------------------------------------


def test_a_record_without_classification_is_judged_as_personal_data():
    d = decide(Classification.UNSPECIFIED, "DE", "us-west-2", REPLICATE)
    assert (d.outcome, d.rule) == ("refuse", "gdpr.no-transfer-basis")
    assert d.reason.startswith("no classification given, judged as personal data: ")
    assert decide(Classification.UNSPECIFIED, "DE", "eu-west-1", STORE).allowed
    assert not decide(Classification.UNSPECIFIED, "", "eu-west-1", STORE).allowed


@pytest.mark.parametrize("action", ACTIONS)
def test_personal_data_without_a_subject_jurisdiction_is_refused_everywhere(action):
    d = decide(P, "", "eu-west-1", action)
    assert (d.outcome, d.rule) == ("refuse", "subject-jurisdiction-missing")
    assert "subject_jurisdiction" in d.reason and d.allowed_regions == ()


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("UK", "use GB"),
        ("de", "upper-case"),
        ("Germany", "ISO 3166-1"),
        ("XX", "not an ISO 3166-1"),
        ("US-", "ISO 3166-2"),
    ],
)
def test_a_malformed_subject_jurisdiction_is_refused_with_the_reason(code, hint):
    d = decide(P, code, "eu-west-1", STORE)
    assert (d.outcome, d.rule) == ("refuse", "subject-jurisdiction-invalid")
    assert hint in d.reason
    with pytest.raises(InvalidArgument, match="subject jurisdiction"):
        check_facts(RecordFacts("ns", P, "s", code))


def test_check_facts_requires_a_classification():
    with pytest.raises(InvalidArgument, match="a classification is required; allowed: public, internal"):
        check_facts(RecordFacts("ns", Classification.UNSPECIFIED, "s", "DE"))
    check_facts(RecordFacts("ns", P, "s", "US-CA"))


def test_an_unlisted_jurisdiction_follows_the_pack_switch():
    d = decide(P, "SG", "eu-west-1", STORE)
    assert (d.outcome, d.rule) == ("refuse", "unlisted-jurisdiction")
    assert "SG (Singapore)" in d.reason and "add one" in d.reason
    d = decide(P, "SG", "eu-west-1", STORE, (("top", "unlisted_jurisdictions", "allow"),))
    assert (d.outcome, d.rule) == ("allow", "unlisted-jurisdiction")
    assert decide(Classification.PUBLIC, "SG", "eu-west-1", STORE).allowed


@pytest.mark.parametrize("code", ["KR", "GB", "CH", "IN"])
def test_the_four_new_jurisdictions_are_no_longer_unlisted(code):
    # Regression: before PIPA, the UK GDPR, the FADP and the DPDP Act were in the pack, a
    # customer in these countries was refused in every region as unlisted-jurisdiction.
    d = decide(P, code, "eu-west-1", STORE)
    assert d.rule != "unlisted-jurisdiction" and d.allowed, d.reason
    assert policy().allowed_regions(RecordFacts("ns", P, "s", code), STORE)


def test_a_region_the_pack_does_not_know_is_refused():
    d = decide(Classification.PUBLIC, "", "mars-north-1", STORE)
    assert (d.outcome, d.rule) == ("refuse", "region-unknown")
    assert "mars-north-1" in d.reason and "us-east-1" in d.reason
    assert d.allowed_regions == REGIONS


def test_an_unknown_action_is_an_error():
    with pytest.raises(InvalidArgument, match="unknown action 'write'; allowed: store, replicate, read"):
        policy().decide(RecordFacts("ns", P, "s", "DE"), "eu-west-1", "write")
    with pytest.raises(InvalidArgument, match="unknown action"):
        policy().allowed_regions(RecordFacts("ns", P, "s", "DE"), "delete")


def test_a_classification_may_be_confined_to_regions():
    flips = (("classification", "confidential", (("regions", ("eu-west-1", "eu-central-1")),)),)
    d = decide(Classification.CONFIDENTIAL, "", "us-east-1", STORE, flips)
    assert (d.outcome, d.rule) == ("refuse", "classification.confidential.regions")
    assert "eu-west-1, eu-central-1" in d.reason
    assert d.allowed_regions == ("eu-west-1", "eu-central-1")
    assert decide(Classification.CONFIDENTIAL, "", "eu-central-1", READ, flips).allowed
    # a confined personal classification is confined and then judged by the law as well
    flips = (("classification", "personal", (("regions", ("eu-west-1", "us-west-2")),)),)
    assert decide(P, "DE", "eu-west-1", STORE, flips).allowed
    assert decide(P, "DE", "us-west-2", STORE, flips).rule == "gdpr.no-transfer-basis"
    assert decide(P, "DE", "us-east-1", STORE, flips).rule == "classification.personal.regions"


def test_a_refused_read_may_be_answered_redacted():
    flips = (
        (
            "classification",
            "financial",
            (("on_read_refused", "redact"), ("redact_fields", ("value", "subject_id"))),
        ),
    )
    d = decide(Classification.FINANCIAL, "DE", "us-west-2", READ, flips)
    assert (d.outcome, d.allowed, d.redacted_fields) == ("redact", True, ("value", "subject_id"))
    assert d.rule == "gdpr.no-transfer-basis.redacted" and d.law == "GDPR"
    assert "us-west-2" not in d.allowed_regions
    # only reads are redacted; stores and replication are still refused
    assert decide(Classification.FINANCIAL, "DE", "us-west-2", STORE, flips).outcome == "refuse"
    assert decide(Classification.FINANCIAL, "DE", "us-west-2", REPLICATE, flips).outcome == "refuse"
    # and an allowed read is not redacted
    assert decide(Classification.FINANCIAL, "DE", "eu-west-1", READ, flips).outcome == "allow"


def test_decisions_do_not_depend_on_namespace_or_subject_id():
    pol = policy()
    a = pol.decide(RecordFacts("one", P, "alice", "DE"), "us-west-2", REPLICATE)
    b = pol.decide(RecordFacts("two", P, "bob", "DE"), "us-west-2", REPLICATE)
    assert a == b


def test_a_small_cache_gives_the_same_answers():
    pack = policy().pack
    small = JurisdictionPolicy(pack, cache_entries_max=2)
    big = JurisdictionPolicy(pack)
    for j in ("DE", "BR", "JP", "CN", "RU", "US-CA", "KR", "GB", "CH", "IN", ""):
        for region in REGIONS:
            for action in ACTIONS:
                facts = RecordFacts("ns", P, "s", j)
                assert small.decide(facts, region, action) == big.decide(facts, region, action)
    assert len(small._cache) <= 2
    with pytest.raises(InvalidArgument, match="cache_entries_max"):
        JurisdictionPolicy(pack, cache_entries_max=0)


# -- the PlacementPolicy seam -----------------------------------------------------------------


def test_it_is_a_placement_policy_with_the_pack_version():
    pol: PlacementPolicy = policy()
    assert pol.version == "2026-12-01.1"


def test_decision_defaults_keep_existing_callers_working():
    d = Decision(True, "namespace-scope", "in scope", ("eu-west-1",))
    assert (d.law, d.basis, d.evidence, d.redacted_fields, d.outcome) == ("", "", (), (), "allow")
    assert Decision(False, "r", "x").outcome == "refuse"


def test_for_cluster_accepts_the_sample_cluster():
    pol = JurisdictionPolicy.for_cluster(policy().pack, load_cluster(CLUSTER))
    assert pol.regions == REGIONS


def test_for_cluster_rejects_regions_the_pack_does_not_know_or_places_elsewhere():
    pack = policy().pack
    missing = parse_cluster(
        {"regions": [{"name": "eu-west-1", "country": "IE"}, {"name": "me-south-1", "country": "BH"}]}
    )
    with pytest.raises(
        InvalidArgument, match=r"cluster region me-south-1 is not in policy pack 2026-12-01\.1"
    ):
        JurisdictionPolicy.for_cluster(pack, missing)
    moved = parse_cluster({"regions": [{"name": "eu-west-1", "country": "GB"}]})
    with pytest.raises(
        InvalidArgument, match="eu-west-1 is in GB by the cluster config but in IE by policy pack"
    ):
        JurisdictionPolicy.for_cluster(pack, moved)
    with pytest.raises(InvalidArgument, match="regions mars-1 are not in policy pack"):
        JurisdictionPolicy(pack, ["mars-1"])


# -- randomized: decide never raises on record facts and stays consistent ----------------------


def test_random_facts_get_consistent_decisions():
    seed = int(os.environ.get("POLICY_SEED", random.randrange(2**32)))
    print(f"POLICY_SEED={seed}")
    rng = random.Random(seed)
    pol = JurisdictionPolicy(policy().pack, cache_entries_max=64)
    fresh = JurisdictionPolicy(policy().pack)
    codes = [
        "DE",
        "FR",
        "NO",
        "US",
        "US-CA",
        "US-TX",
        "BR",
        "JP",
        "CN",
        "RU",
        "GB",
        "IN",
        "KR",
        "CH",
        "SG",
        "",
    ]
    junk = ["UK", "de", "D", "DEU", "US-", "US-CALI", "--", "\x00", "EU"]
    for _ in range(2000):
        c = rng.choice(list(Classification))
        j = (
            rng.choice(codes + junk)
            if rng.random() < 0.9
            else "".join(rng.choices("ABZ-1a", k=rng.randint(0, 6)))
        )
        region = rng.choice([*REGIONS, "nowhere-1"])
        action = rng.choice(ACTIONS)
        facts = RecordFacts("ns", c, "s", j)
        d = pol.decide(facts, region, action)
        assert d == fresh.decide(facts, region, action), (seed, facts, region, action)
        assert set(d.allowed_regions) <= set(REGIONS)
        assert (d.outcome == "allow") == (region in d.allowed_regions), (seed, facts, region, action, d)
        assert d.redacted_fields == ()  # the shipped pack never redacts
        if d.allowed and c is not Classification.UNSPECIFIED and pol.pack.classifications[c].personal_data:
            assert d.law, (seed, facts, region, action, d)
