"""The policy pack's types: regions, country groups, laws, adequacy entries and recorded facts.

`PolicyPack` also answers the lookups the rules need (the law of a jurisdiction, whether a
region is in a law's home area, the facts recorded for a destination). Packs are built and
validated by domicile/policy/pack.py.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from domicile.errors import InvalidArgument
from domicile.model import Classification
from domicile.policy.jurisdiction import Jurisdiction

REDACTABLE_FIELDS = ("value", "subject_id", "subject_jurisdiction", "content_type")


class Regime(enum.StrEnum):
    """How a law restricts where personal data of its subjects may be."""

    # Free inside the home area; elsewhere only with an adequacy decision in force or a
    # recorded transfer mechanism (GDPR, LGPD, APPI, PIPL).
    TRANSFER_RESTRICTED = "transfer_restricted"
    # No localization or transfer restriction (CCPA/CPRA).
    NO_LOCALIZATION = "no_localization"
    # The primary database must be in the home area; copies elsewhere need a recorded
    # cross-border mechanism (Russia 152-FZ Art. 18(5)).
    PRIMARY_IN_COUNTRY = "primary_in_country"
    # Allowed everywhere except to countries the government has restricted by notification
    # (India's DPDP Act 2023, s. 16).
    TRANSFER_UNLESS_RESTRICTED = "transfer_unless_restricted"


class UnlistedJurisdictions(enum.StrEnum):
    """What happens to personal data of a subject whose jurisdiction no law of the pack covers."""

    REFUSE = "refuse"
    ALLOW = "allow"


@dataclass(frozen=True)
class Fact:
    """A yes/no fact an operator records and keeps current."""

    value: bool
    checked: datetime.date
    source: str
    note: str = ""

    def cite(self, statement: str) -> str:
        answer = "yes" if self.value else "no"
        return f"{statement}: {answer} (checked {self.checked.isoformat()}; source: {self.source})"


@dataclass(frozen=True)
class PackRegion:
    name: str
    country: str
    jurisdiction: str
    subdivision: str = ""
    location: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.subdivision or self.country})"


@dataclass(frozen=True)
class CountryGroup:
    """A named list of countries (the EEA), itself a fact with a date and a source."""

    name: str
    members: tuple[str, ...]
    checked: datetime.date
    source: str
    note: str = ""


@dataclass(frozen=True)
class Adequacy:
    """A finding that `country` (a country or a country group) protects personal data adequately
    (GDPR Art. 45 and the like).

    `requires` names a recipient fact that must be recorded as true for the destination region:
    the EU-US decision covers only recipients certified under the Data Privacy Framework, the
    Canadian one only commercial organisations.
    """

    country: str
    name: str
    decision: str
    fact: Fact
    requires: str = ""
    scope: str = ""
    # the countries covered: `country` itself, or the members of the group it names
    members: tuple[str, ...] = ()

    def covers(self, country: str) -> bool:
        return country in (self.members or (self.country,))


@dataclass(frozen=True)
class Law:
    id: str
    name: str
    title: str
    regime: Regime
    subjects: tuple[str, ...]
    checked: datetime.date
    source: str
    home: tuple[str, ...] = ()
    home_basis: str = ""
    refusal_basis: str = ""
    basis: str = ""
    adequacy_basis: str = ""
    adequacy: tuple[Adequacy, ...] = ()
    # mechanism kind -> the legal basis it rests on, in order of preference
    mechanisms: Mapping[str, str] = field(default_factory=dict)
    note: str = ""
    # transfer_unless_restricted: the countries the government has restricted, each a dated
    # fact like an adequacy entry (in force or not); `restriction_basis` is the power used.
    restriction_basis: str = ""
    restrictions: tuple[Adequacy, ...] = ()


@dataclass(frozen=True)
class ClassificationRule:
    """Whether records of a classification are personal data, and optional extra limits.

    `regions` (None: every region) narrows where such records may be at all. A read that the
    law refuses is answered with `redact_fields` removed when `on_read_refused` is "redact".
    """

    classification: Classification
    personal_data: bool
    regions: tuple[str, ...] | None = None
    on_read_refused: str = "refuse"
    redact_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Destination:
    """Facts recorded about one destination region: its recipient and its transfer mechanisms."""

    region: str
    recipient: Mapping[str, Fact] = field(default_factory=dict)
    # (law id, mechanism kind) -> fact
    mechanisms: Mapping[tuple[str, str], Fact] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyPack:
    version: str
    regions: tuple[PackRegion, ...]
    groups: Mapping[str, CountryGroup]
    classifications: Mapping[Classification, ClassificationRule]
    laws: tuple[Law, ...]
    destinations: Mapping[str, Destination]
    unlisted_jurisdictions: UnlistedJurisdictions = UnlistedJurisdictions.REFUSE
    description: str = ""
    source: str = "policy pack"
    _regions: Mapping[str, PackRegion] = field(default_factory=dict, compare=False, repr=False)
    _law_by_code: Mapping[str, Law] = field(default_factory=dict, compare=False, repr=False)
    _homes: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regions", {r.name: r for r in self.regions})
        by_code: dict[str, Law] = {}
        for law in self.laws:
            for code in sorted(self.expand(law.subjects)):
                other = by_code.get(code)
                if other is not None:
                    raise InvalidArgument(
                        f"{self.source}: laws: subjects {code} are claimed by both {other.id} and "
                        f"{law.id}; each jurisdiction must have exactly one law"
                    )
                by_code[code] = law
        object.__setattr__(self, "_law_by_code", by_code)
        object.__setattr__(self, "_homes", {law.id: self.expand(law.home) for law in self.laws})

    # -- lookups ----------------------------------------------------------------------------

    def region(self, name: str) -> PackRegion | None:
        return self._regions.get(name)

    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    def expand(self, codes: Iterable[str]) -> frozenset[str]:
        """Country and subdivision codes, with group names replaced by their members."""
        out: set[str] = set()
        for code in codes:
            group = self.groups.get(code)
            out.update(group.members if group is not None else (code,))
        return frozenset(out)

    def law_for(self, subject: Jurisdiction) -> Law | None:
        """The law of a subdivision if it has one of its own (US-CA), else that of its country."""
        return self._law_by_code.get(subject.code) or self._law_by_code.get(subject.country)

    def in_home(self, law: Law, region: PackRegion) -> bool:
        home = self._homes[law.id]
        return region.country in home or (bool(region.subdivision) and region.subdivision in home)

    def law(self, law_id: str) -> Law | None:
        return next((law for law in self.laws if law.id == law_id), None)

    def representative_subject(self, law: Law) -> str:
        """A jurisdiction the law covers: its first country, else its first subdivision (a law
        of US-CA alone has no country)."""
        codes = sorted(self.expand(law.subjects))
        return next((c for c in codes if "-" not in c), codes[0])

    def recipient_fact(self, region: str, name: str) -> Fact | None:
        dest = self.destinations.get(region)
        return dest.recipient.get(name) if dest is not None else None

    def mechanism_fact(self, region: str, law_id: str, kind: str) -> Fact | None:
        dest = self.destinations.get(region)
        return dest.mechanisms.get((law_id, kind)) if dest is not None else None
