"""The compliance scanner: which record copies on this node may no longer stay here?

It judges every live version by the policy in force: the copy the node accepted itself as a
store, a replicated copy as a replication to this region. It reports and never changes
anything: after a policy tightens, moving or erasing data is a decision for people.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from domicile.cluster import ClusterSpec
from domicile.policy import Action, PlacementPolicy, RecordFacts
from domicile.results import ComplianceViolation
from domicile.wire.limits import VIOLATIONS_MAX_DEFAULT
from node.engine.base import StorageEngine

PAGE_KEYS = 1000


@dataclass
class ScanReport:
    region: str
    policy_version: str
    versions_checked: int = 0
    violations_total: int = 0
    violations: list[ComplianceViolation] = field(default_factory=list)


def scan_store(
    engine: StorageEngine,
    policy: PlacementPolicy,
    cluster: ClusterSpec,
    region: str,
    *,
    violations_max: int = VIOLATIONS_MAX_DEFAULT,
    progress: Callable[[int], None] | None = None,
) -> ScanReport:
    """Walks every namespace of the store page by page (bounded memory). Thread-safe reads only,
    so it can run beside the writer."""
    report = ScanReport(region=region, policy_version=policy.version)
    for namespace in engine.namespaces():
        known = cluster.find_namespace(namespace) is not None
        start_after = ""
        while True:
            rows = engine.scan(namespace, "", start_after, PAGE_KEYS)
            for key, state in rows:
                for v in state.live():
                    report.versions_checked += 1
                    if known:
                        action = Action.STORE if v.origin_region == region else Action.REPLICATE
                        facts = RecordFacts(namespace, v.classification, v.subject_id, v.subject_jurisdiction)
                        decision = policy.decide(facts, region, action)
                        if decision.allowed:
                            continue
                        rule, reason, allowed = decision.rule, decision.reason, decision.allowed_regions
                    else:
                        rule = "namespace-unknown"
                        reason = f"namespace {namespace} is not in the cluster configuration any more"
                        allowed = ()
                    report.violations_total += 1
                    if len(report.violations) < violations_max:
                        report.violations.append(
                            ComplianceViolation(
                                namespace=namespace,
                                key=key,
                                region=region,
                                origin_region=v.origin_region,
                                classification=v.classification,
                                subject_jurisdiction=v.subject_jurisdiction,
                                rule=rule,
                                reason=reason,
                                allowed_regions=allowed,
                            )
                        )
            if progress is not None:
                progress(report.versions_checked)
            if len(rows) < PAGE_KEYS:
                break
            start_after = rows[-1][0]
    return report
