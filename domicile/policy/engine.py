"""`JurisdictionPolicy`: placement and transfer decisions by the law of the data subject.

For a record of classification C about a subject in jurisdiction J, and an action at a region:

1. A region the pack does not know is refused: its country decides everything.
2. The classification's rule may confine the records to listed regions.
3. Classifications that are not personal data (public, internal and confidential in the shipped
   pack) are allowed in every region.
4. Personal data (personal, sensitive_personal, financial) follows the law the pack assigns to
   J: a subdivision's own law (US-CA: CCPA/CPRA) or else its country's (DE: GDPR, through the
   EEA group). Its regime (domicile/policy/rules.py) decides with the pack's facts.
5. Personal data without a valid subject jurisdiction is refused everywhere: its law is unknown.
   A jurisdiction no law covers follows the pack's `unlisted_jurisdictions` (refuse or allow).
6. A read the law refuses is answered with fields redacted instead, where the classification's
   rule says so.

A record without a classification is judged as personal data, so that a missing label can only
make a decision stricter. Decisions are pure functions of the pack and are cached (bounded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from domicile.cluster import ClusterSpec
from domicile.errors import InvalidArgument
from domicile.model import Classification
from domicile.policy import Action, Decision, RecordFacts
from domicile.policy.jurisdiction import parse_jurisdiction
from domicile.policy.pack_model import PackRegion, PolicyPack, UnlistedJurisdictions
from domicile.policy.rules import RULES, Verdict, verb

ACTIONS = (Action.STORE, Action.REPLICATE, Action.READ)
CACHE_ENTRIES_MAX = 4096

_Key = tuple[Classification, str, str, str]


def check_action(action: str) -> None:
    if action not in ACTIONS:
        raise InvalidArgument(f"unknown action {action!r}; allowed: {', '.join(ACTIONS)}")


def check_facts(facts: RecordFacts) -> None:
    """Raises InvalidArgument for facts no decision should be asked about (for callers that take
    them from a user, such as `domicile policy explain`); `decide` itself refuses them."""
    if facts.classification is Classification.UNSPECIFIED:
        allowed = ", ".join(c.label for c in Classification if c is not Classification.UNSPECIFIED)
        raise InvalidArgument(f"a classification is required; allowed: {allowed}")
    if facts.subject_jurisdiction:
        parse_jurisdiction(facts.subject_jurisdiction)


class JurisdictionPolicy:
    """A PlacementPolicy that decides by the law of the subject's jurisdiction.

    `regions` are the regions of the cluster (default: every region of the pack); they must all
    be in the pack, and they are the ones `allowed_regions` chooses from.
    """

    def __init__(
        self,
        pack: PolicyPack,
        regions: Sequence[str] | None = None,
        *,
        cache_entries_max: int = CACHE_ENTRIES_MAX,
    ) -> None:
        names = pack.region_names() if regions is None else tuple(dict.fromkeys(regions))
        unknown = [r for r in names if pack.region(r) is None]
        if unknown:
            raise InvalidArgument(
                f"regions {', '.join(unknown)} are not in policy pack {pack.version}; "
                f"its regions: {', '.join(pack.region_names())}"
            )
        if cache_entries_max < 1:
            raise InvalidArgument(f"cache_entries_max must be at least 1, got {cache_entries_max}")
        self.pack = pack
        self.version = pack.version
        self.regions = names
        self._cache: dict[_Key, Verdict] = {}
        self._cache_entries_max = cache_entries_max

    @classmethod
    def for_cluster(cls, pack: PolicyPack, cluster: ClusterSpec) -> JurisdictionPolicy:
        """A policy over the cluster's regions, which must agree with the pack on their country."""
        for spec in cluster.regions:
            region = pack.region(spec.name)
            if region is None:
                raise InvalidArgument(
                    f"cluster region {spec.name} is not in policy pack {pack.version}; add it to the "
                    f"pack with its country (pack regions: {', '.join(pack.region_names())})"
                )
            if spec.country and spec.country != region.country:
                raise InvalidArgument(
                    f"cluster region {spec.name} is in {spec.country} by the cluster config but in "
                    f"{region.country} by policy pack {pack.version}; they must agree"
                )
        return cls(pack, cluster.region_names())

    # -- the PlacementPolicy interface -----------------------------------------------------------

    def decide(self, facts: RecordFacts, region: str, action: str) -> Decision:
        """May `region` hold (store / receive by replication / serve a read of) this record?"""
        check_action(action)
        v = self._verdict(facts, region, action)
        return Decision(
            allowed=v.allowed,
            rule=v.rule,
            reason=v.reason,
            allowed_regions=self._allowed(facts, action),
            law=v.law,
            basis=v.basis,
            evidence=v.evidence,
            redacted_fields=v.redacted_fields,
        )

    def allowed_regions(self, facts: RecordFacts, action: str) -> tuple[str, ...]:
        """The configured regions where `action` is allowed for this record without redaction."""
        check_action(action)
        return self._allowed(facts, action)

    # -- internals ---------------------------------------------------------------------------

    def _allowed(self, facts: RecordFacts, action: str) -> tuple[str, ...]:
        out = []
        for name in self.regions:
            v = self._verdict(facts, name, action)
            if v.allowed and not v.redacted_fields:
                out.append(name)
        return tuple(out)

    def _verdict(self, facts: RecordFacts, region: str, action: str) -> Verdict:
        # Only these facts matter: namespace and subject id never change a decision.
        key = (facts.classification, facts.subject_jurisdiction, region, action)
        verdict = self._cache.get(key)
        if verdict is None:
            verdict = self._judge(*key)
            if len(self._cache) >= self._cache_entries_max:
                self._cache.clear()
            self._cache[key] = verdict
        return verdict

    def _judge(
        self, classification: Classification, jurisdiction: str, region_name: str, action: str
    ) -> Verdict:
        pack = self.pack
        region = pack.region(region_name)
        if region is None:
            return Verdict(
                False,
                "region-unknown",
                f"region {region_name!r} is not in policy pack {pack.version}, so the law of the "
                f"place is unknown; pack regions: {', '.join(pack.region_names())}",
            )
        judged_as = classification
        prefix = ""
        if classification is Classification.UNSPECIFIED:
            judged_as = Classification.PERSONAL
            prefix = "no classification given, judged as personal data: "
        rule = pack.classifications[judged_as]
        if rule.regions is not None and region.name not in rule.regions:
            return Verdict(
                False,
                f"classification.{judged_as.label}.regions",
                f"{prefix}{judged_as.label} records may only be {verb(action)} "
                f"{', '.join(rule.regions) or 'no region'}; {region.name} is not one of them",
                basis=f"policy pack {pack.version}: regions of classification {judged_as.label}",
            )
        if not rule.personal_data:
            return Verdict(
                True,
                f"classification.{judged_as.label}",
                f"{prefix}{judged_as.label} records are not personal data under policy pack "
                f"{pack.version}, so they may be {verb(action)} {region.label}",
                basis="not personal data: no residency or transfer restriction applies",
            )
        verdict = self._personal(jurisdiction, region, action)
        if not verdict.allowed and action == Action.READ and rule.on_read_refused == "redact":
            verdict = dataclasses.replace(
                verdict,
                allowed=True,
                rule=f"{verdict.rule}.redacted",
                reason=f"{verdict.reason}; so the read is answered with "
                f"{', '.join(rule.redact_fields)} redacted",
                redacted_fields=rule.redact_fields,
            )
        if prefix:
            verdict = dataclasses.replace(verdict, reason=prefix + verdict.reason)
        return verdict

    def _personal(self, jurisdiction: str, region: PackRegion, action: str) -> Verdict:
        pack = self.pack
        if not jurisdiction:
            return Verdict(
                False,
                "subject-jurisdiction-missing",
                "personal data needs the data subject's jurisdiction (subject_jurisdiction, e.g. "
                "DE or US-CA) to decide where it may be; none was given",
            )
        try:
            subject = parse_jurisdiction(jurisdiction)
        except InvalidArgument as exc:
            return Verdict(False, "subject-jurisdiction-invalid", exc.message)
        law = pack.law_for(subject)
        if law is None:
            if pack.unlisted_jurisdictions is UnlistedJurisdictions.ALLOW:
                return Verdict(
                    True,
                    "unlisted-jurisdiction",
                    f"no law in policy pack {pack.version} covers subjects in {subject.label}, and "
                    f"the pack allows their personal data in every region",
                    basis=f"policy pack {pack.version}: unlisted_jurisdictions: allow",
                )
            return Verdict(
                False,
                "unlisted-jurisdiction",
                f"no law in policy pack {pack.version} covers subjects in {subject.label}; add one "
                "to the pack before holding their personal data",
                basis=f"policy pack {pack.version}: unlisted_jurisdictions: refuse",
            )
        return RULES[law.regime](pack, law, subject, region, action)
