"""Residency policy: the single seam every placement decision goes through.

Write, replication (at both ends) and read all ask a `PlacementPolicy`. This release ships
`ScopePolicy`, which allows a record where its namespace's configured scope allows it, and
`JurisdictionPolicy` (domicile/policy/engine.py), which decides by the law of the data subject's
jurisdiction and the facts of a versioned policy pack (domicile/policy/pack.py), behind the same
interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from domicile.cluster import ClusterSpec, NamespaceSpec
from domicile.model import Classification


class Action:
    STORE = "store"
    REPLICATE = "replicate"
    READ = "read"


@dataclass(frozen=True)
class RecordFacts:
    """What a placement decision may depend on."""

    namespace: str
    classification: Classification = Classification.UNSPECIFIED
    subject_id: str = ""
    subject_jurisdiction: str = ""


@dataclass(frozen=True)
class Decision:
    """The answer to "may this region do this with this record?".

    `allowed_regions` lists the configured regions where the same action is allowed in full,
    for routing. `law` and `basis` name the law and the legal basis or transfer mechanism the
    decision relied on, `evidence` quotes the policy-pack facts it used (each with the date it
    was checked and its source), and a non-empty `redacted_fields` means "allowed, with these
    fields removed" (reads only).
    """

    allowed: bool
    rule: str
    reason: str
    allowed_regions: tuple[str, ...] = ()
    law: str = ""
    basis: str = ""
    evidence: tuple[str, ...] = ()
    redacted_fields: tuple[str, ...] = ()

    @property
    def outcome(self) -> str:
        """allow, redact or refuse."""
        if not self.allowed:
            return "refuse"
        return "redact" if self.redacted_fields else "allow"


class PlacementPolicy(Protocol):
    version: str

    def decide(self, facts: RecordFacts, region: str, action: str) -> Decision:
        """May `region` hold (store / receive by replication / serve a read of) this record?
        The answer depends on the namespace, classification and subject jurisdiction, never on
        the subject id itself: a node reuses a decision for every record with the same three
        (node.compliance.enforcer)."""
        ...


class ScopePolicy:
    """Allows a record in exactly the regions its namespace's scope lists."""

    def __init__(self, cluster: ClusterSpec) -> None:
        self.cluster = cluster
        self.version = cluster.policy_version

    def _allowed(self, spec: NamespaceSpec) -> tuple[str, ...]:
        return tuple(self.cluster.region_names()) if spec.is_global else spec.regions

    def decide(self, facts: RecordFacts, region: str, action: str) -> Decision:
        spec = self.cluster.namespace(facts.namespace)
        allowed = self._allowed(spec)
        if spec.allows(region):
            return Decision(True, "namespace-scope", f"{region} is in the scope of {spec.name}", allowed)
        return Decision(
            False,
            "namespace-scope",
            f"namespace {spec.name} may only be held in: {', '.join(allowed)}; {region} is outside",
            allowed,
        )
