"""The compliance scanner: which record copies on this node may no longer stay here?

It judges every live version by the policy in force: the copy the node accepted itself as a
store, a replicated copy as a replication to this region. It reports and never changes
anything: after a policy tightens, moving or erasing data is a decision for people.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from domicile.causality import Version
from domicile.cluster import ClusterSpec
from domicile.policy import Action, PlacementPolicy, RecordFacts
from domicile.results import ComplianceViolation
from domicile.subjects import LegalHold, hold_covering
from domicile.wire.limits import VIOLATIONS_MAX_DEFAULT
from node.engine.base import StorageEngine

PAGE_KEYS = 1000
RULE_UNKNOWN_NAMESPACE = "namespace-unknown"


@dataclass
class ScanReport:
    region: str
    policy_version: str
    versions_checked: int = 0
    violations_total: int = 0
    # Of violations_total, those a legal hold covers (a remediation keeps them).
    violations_held: int = 0
    violations: list[ComplianceViolation] = field(default_factory=list)


@dataclass(frozen=True)
class Judge:
    """How the scanner and a remediation judge one live version held in `region`: by the
    policy in force, a store for the copies accepted here and a replication for the others,
    and, when it is forbidden, whether a legal hold covers it (the hold-matching an erasure and
    retention use, domicile.subjects.hold_covering, per version since each names its subject)."""

    policy: PlacementPolicy
    cluster: ClusterSpec
    region: str
    holds: tuple[LegalHold, ...] = ()

    def known(self, namespace: str) -> bool:
        return self.cluster.find_namespace(namespace) is not None

    def violation(self, namespace: str, key: str, v: Version, known: bool) -> ComplianceViolation | None:
        """None when the policy allows the version here; `known`: the namespace is in the
        cluster configuration (asked once per namespace)."""
        if known:
            action = Action.STORE if v.origin_region == self.region else Action.REPLICATE
            facts = RecordFacts(namespace, v.classification, v.subject_id, v.subject_jurisdiction)
            decision = self.policy.decide(facts, self.region, action)
            if decision.allowed:
                return None
            rule, reason, allowed = decision.rule, decision.reason, decision.allowed_regions
        else:
            rule, allowed = RULE_UNKNOWN_NAMESPACE, ()
            reason = f"namespace {namespace} is not in the cluster configuration any more"
        hold = hold_covering(self.holds, namespace, key, v.subject_id)
        return ComplianceViolation(
            namespace=namespace,
            key=key,
            region=self.region,
            origin_region=v.origin_region,
            classification=v.classification,
            subject_jurisdiction=v.subject_jurisdiction,
            rule=rule,
            reason=reason,
            allowed_regions=tuple(allowed),
            hold_reason=hold.describe() if hold is not None else "",
        )


def scan_store(
    engine: StorageEngine,
    policy: PlacementPolicy,
    cluster: ClusterSpec,
    region: str,
    *,
    holds: tuple[LegalHold, ...] = (),
    violations_max: int = VIOLATIONS_MAX_DEFAULT,
    progress: Callable[[int], None] | None = None,
) -> ScanReport:
    """Walks every namespace of the store page by page (bounded memory). Thread-safe reads only,
    so it can run beside the writer. A copy a legal hold covers is still a violation (it is
    where the policy forbids it), reported with the hold that keeps it."""
    judge = Judge(policy, cluster, region, holds)
    report = ScanReport(region=region, policy_version=policy.version)
    for namespace in engine.namespaces():
        known = judge.known(namespace)
        start_after = ""
        while True:
            rows = engine.scan(namespace, "", start_after, PAGE_KEYS)
            for key, state in rows:
                for v in state.live():
                    report.versions_checked += 1
                    violation = judge.violation(namespace, key, v, known)
                    if violation is None:
                        continue
                    report.violations_total += 1
                    report.violations_held += violation.held
                    if len(report.violations) < violations_max:
                        report.violations.append(violation)
            if progress is not None:
                progress(report.versions_checked)
            if len(rows) < PAGE_KEYS:
                break
            start_after = rows[-1][0]
    return report
