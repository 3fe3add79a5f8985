"""The legal logic of each regime: given the law of the subject's jurisdiction, may personal
data of that subject be stored in, replicated to or read from a region?

Reading from a region is judged like sending the data there: a read served from outside the
home area discloses the record in that region, which is a transfer (GDPR Art. 44 covers any
disclosure to a third country, not only copies at rest).

Storing at a region makes that region a primary of the record: a client's write lands there
first. Replication makes a secondary copy. Only the Russian regime tells the two apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from domicile.policy import Action
from domicile.policy.jurisdiction import Jurisdiction, country_label
from domicile.policy.pack_model import Law, PackRegion, PolicyPack, Regime

_VERBS = {Action.STORE: "stored in", Action.REPLICATE: "replicated to", Action.READ: "read from"}


@dataclass(frozen=True)
class Verdict:
    """A decision about one region, before the list of allowed regions is attached."""

    allowed: bool
    rule: str
    reason: str
    law: str = ""
    basis: str = ""
    evidence: tuple[str, ...] = ()
    redacted_fields: tuple[str, ...] = ()


def verb(action: str) -> str:
    return _VERBS.get(action, action)


def _home_text(law: Law) -> str:
    return ", ".join(law.home) if law.home else "-"


def _home_evidence(pack: PolicyPack, law: Law, region: PackRegion) -> tuple[str, ...]:
    for code in law.home:
        group = pack.groups.get(code)
        if group is not None and region.country in group.members:
            return (
                f"{group.name} members include {region.country} (checked {group.checked.isoformat()}; "
                f"source: {group.source})",
            )
    return (
        f"{law.name} home area includes {region.country} (checked {law.checked.isoformat()}; "
        f"source: {law.source})",
    )


def _home(pack: PolicyPack, law: Law, subject: Jurisdiction, region: PackRegion, action: str) -> Verdict:
    return Verdict(
        True,
        f"{law.id}.home",
        f"personal data of a subject in {subject.code} ({law.name}) may be {verb(action)} {region.label}: "
        f"{region.country} is inside the home area of {law.name} ({_home_text(law)})",
        law.name,
        law.home_basis,
        _home_evidence(pack, law, region),
    )


def _mechanism(pack: PolicyPack, law: Law, region: PackRegion) -> tuple[str, str, str] | None:
    """The first recorded mechanism in the law's order of preference: (kind, basis, citation)."""
    for kind, basis in law.mechanisms.items():
        fact = pack.mechanism_fact(region.name, law.id, kind)
        if fact is not None and fact.value:
            return kind, basis, fact.cite(f"{region.name}: {law.name} mechanism {kind} recorded")
    return None


def _no_mechanism_text(law: Law, region: PackRegion) -> str:
    kinds = ", ".join(law.mechanisms) or "none accepted"
    return f"no transfer mechanism is recorded for {region.name} (accepted: {kinds})"


def _considered(pack: PolicyPack, law: Law, region: PackRegion) -> tuple[str, ...]:
    """The recorded facts about this destination that were looked at and found false."""
    out: list[str] = []
    for kind in law.mechanisms:
        fact = pack.mechanism_fact(region.name, law.id, kind)
        if fact is not None and not fact.value:
            out.append(fact.cite(f"{region.name}: {law.name} mechanism {kind} recorded"))
    return tuple(out)


def transfer_restricted(
    pack: PolicyPack, law: Law, subject: Jurisdiction, region: PackRegion, action: str
) -> Verdict:
    """GDPR, LGPD, APPI, PIPL: free in the home area; elsewhere by adequacy or a mechanism."""
    if pack.in_home(law, region):
        return _home(pack, law, subject, region, action)
    subject_text = f"personal data of a subject in {subject.code} ({law.name})"
    missing: list[str] = [f"{region.country} is outside the home area ({_home_text(law)})"]
    considered: list[str] = []
    entry = next((a for a in law.adequacy if a.covers(region.country)), None)
    if entry is None:
        if law.adequacy:
            missing.append(f"no {law.name} adequacy finding covers {country_label(region.country)}")
    elif not entry.fact.value:
        missing.append(f"the {law.name} adequacy finding for {entry.name} is recorded as not in force")
        considered.append(entry.fact.cite(f"{law.name} adequacy for {entry.name} in force"))
    else:
        adequacy_cite = entry.fact.cite(f"{law.name} adequacy for {entry.name} in force")
        scope = f" ({entry.scope})" if entry.scope else ""
        basis = f"{law.adequacy_basis}: {entry.decision}{scope}"
        recipient = pack.recipient_fact(region.name, entry.requires) if entry.requires else None
        if not entry.requires or (recipient is not None and recipient.value):
            evidence: tuple[str, ...] = (adequacy_cite,)
            condition = ""
            if recipient is not None:
                evidence += (recipient.cite(f"{region.name} recipient {entry.requires}"),)
                condition = f", and the recipient at {region.name} is recorded as {entry.requires}"
            return Verdict(
                True,
                f"{law.id}.adequacy",
                f"{subject_text} may be {verb(action)} {region.label}: {law.name} recognises "
                f"{entry.name} as adequate ({entry.decision}){condition}",
                law.name,
                basis,
                evidence,
            )
        considered.append(adequacy_cite)
        if recipient is None:
            missing.append(
                f"the {law.name} adequacy finding for {entry.name} covers only recipients that are "
                f"{entry.requires}, and nothing records that the recipient at {region.name} is"
            )
        else:
            considered.append(recipient.cite(f"{region.name} recipient {entry.requires}"))
            missing.append(
                f"the {law.name} adequacy finding for {entry.name} covers only recipients that are "
                f"{entry.requires}, and the recipient at {region.name} is recorded as not"
            )
    found = _mechanism(pack, law, region)
    if found is not None:
        kind, basis, cite = found
        return Verdict(
            True,
            f"{law.id}.mechanism.{kind}",
            f"{subject_text} may be {verb(action)} {region.label}: mechanism {kind} is recorded "
            f"for {region.name}",
            law.name,
            basis,
            (cite,),
        )
    missing.append(_no_mechanism_text(law, region))
    return Verdict(
        False,
        f"{law.id}.no-transfer-basis",
        f"{subject_text} may not be {verb(action)} {region.label}: " + "; ".join(missing),
        law.name,
        law.refusal_basis,
        tuple(considered) + _considered(pack, law, region),
    )


def no_localization(
    pack: PolicyPack, law: Law, subject: Jurisdiction, region: PackRegion, action: str
) -> Verdict:
    """CCPA/CPRA and the like: no localization or transfer restriction."""
    return Verdict(
        True,
        f"{law.id}.no-localization",
        f"personal data of a subject in {subject.code} ({law.name}) may be {verb(action)} "
        f"{region.label}: {law.name} imposes no localization",
        law.name,
        law.basis,
        (f"{law.name} imposes no localization (checked {law.checked.isoformat()}; source: {law.source})",),
    )


def primary_in_country(
    pack: PolicyPack, law: Law, subject: Jurisdiction, region: PackRegion, action: str
) -> Verdict:
    """Russia 152-FZ Art. 18(5): the primary database must be at home.

    A store is a primary write, so it is refused anywhere outside the home area, whatever is
    recorded. A replicated or read copy outside it needs a recorded cross-border mechanism.
    """
    if pack.in_home(law, region):
        return _home(pack, law, subject, region, action)
    subject_text = f"personal data of a subject in {subject.code} ({law.name})"
    if action == Action.STORE:
        return Verdict(
            False,
            f"{law.id}.primary-outside",
            f"{subject_text} may not be {verb(action)} {region.label}: a write there would make "
            f"{region.name} a primary database of the record outside {_home_text(law)}",
            law.name,
            law.refusal_basis,
        )
    found = _mechanism(pack, law, region)
    if found is not None:
        kind, basis, cite = found
        return Verdict(
            True,
            f"{law.id}.mechanism.{kind}",
            f"{subject_text} may be {verb(action)} {region.label} as a secondary copy: mechanism "
            f"{kind} is recorded for {region.name}",
            law.name,
            basis,
            (cite,),
        )
    return Verdict(
        False,
        f"{law.id}.no-transfer-basis",
        f"{subject_text} may not be {verb(action)} {region.label}: it is outside "
        f"{_home_text(law)} and {_no_mechanism_text(law, region)}",
        law.name,
        law.refusal_basis,
        _considered(pack, law, region),
    )


def transfer_unless_restricted(
    pack: PolicyPack, law: Law, subject: Jurisdiction, region: PackRegion, action: str
) -> Verdict:
    """India's DPDP Act s. 16: allowed anywhere except a country the government restricted."""
    subject_text = f"personal data of a subject in {subject.code} ({law.name})"
    entry = next((r for r in law.restrictions if r.covers(region.country)), None)
    if entry is not None and entry.fact.value:
        return Verdict(
            False,
            f"{law.id}.restricted-country",
            f"{subject_text} may not be {verb(action)} {region.label}: {entry.name} is restricted "
            f"({entry.decision})",
            law.name,
            f"{law.restriction_basis}: {entry.decision}",
            (entry.fact.cite(f"{law.name} restriction of {entry.name} in force"),),
        )
    evidence = [
        f"{law.name} restricts no transfer to {country_label(region.country)} "
        f"(checked {law.checked.isoformat()}; source: {law.source})"
    ]
    if entry is not None:
        evidence.append(entry.fact.cite(f"{law.name} restriction of {entry.name} in force"))
    return Verdict(
        True,
        f"{law.id}.not-restricted",
        f"{subject_text} may be {verb(action)} {region.label}: {law.name} restricts no transfer to "
        f"{country_label(region.country)}",
        law.name,
        law.basis,
        tuple(evidence),
    )


Rule = Callable[[PolicyPack, Law, Jurisdiction, PackRegion, str], Verdict]

RULES: Mapping[Regime, Rule] = {
    Regime.TRANSFER_RESTRICTED: transfer_restricted,
    Regime.NO_LOCALIZATION: no_localization,
    Regime.PRIMARY_IN_COUNTRY: primary_in_country,
    Regime.TRANSFER_UNLESS_RESTRICTED: transfer_unless_restricted,
}
