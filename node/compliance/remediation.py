"""Remediation after the policy tightens: remove, in this region only, the record copies the
policy in force no longer lets it hold.

The dangerous part is not removing: it is removing only here. A Delete would write a tombstone
that replicates like any write, and the regions that may still hold the record would delete
their allowed copies. So a remediation writes no tombstone and no change-log entry: it takes
the forbidden versions out of the key's state in this store (engine `withdraw`,
domicile.causality.withdraw), their dots out of its causal context too, so that nothing this
node sends later (a stream, an anti-entropy answer, a context token a client writes back)
names them and supersedes them elsewhere. If the policy loosens again, the backfill brings them
back, because the context no longer claims to have seen them.

Each removal is audited before it happens (write-ahead, as a write is), and the run ends with a
receipt entry in the trail: what was removed, per namespace, under which policy, by whom.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from domicile.causality import Dot, Version
from domicile.cluster import ClusterSpec
from domicile.policy import Action, PlacementPolicy, RecordFacts
from domicile.results import ComplianceViolation
from node.compliance.enforcer import AuditSink
from node.engine.base import StorageEngine

PAGE_KEYS = 1000
# Copies one remediation removes at most; a later run removes the rest (each run is bounded in
# memory and in the time it holds the scan lock).
COPIES_PER_RUN_MAX = 100_000
WITHDRAW = "compliance_withdraw"
RECEIPT = "compliance_remediation_receipt"
RULE_UNKNOWN_NAMESPACE = "namespace-unknown"
# What an audit entry's detail holds.
RECEIPT_BYTES_MAX = 1000


@dataclass(frozen=True)
class Copy:
    """The versions of one key this region may no longer hold."""

    namespace: str
    key: str
    dots: tuple[Dot, ...]
    subject_id: str
    violation: ComplianceViolation

    @property
    def last_copy(self) -> bool:
        return not self.violation.allowed_regions


@dataclass
class Plan:
    copies: list[Copy] = field(default_factory=list)
    kept_last_copies: int = 0


@dataclass
class Receipt:
    request_id: str
    region: str
    node_id: str
    policy_version: str
    principal: str
    removed: list[Copy] = field(default_factory=list)
    versions_removed: int = 0
    kept_last_copies: int = 0
    receipt_seq: int = 0
    violations_after: int = 0

    def body(self) -> str:
        per_namespace: dict[str, int] = {}
        for copy in self.removed:
            per_namespace[copy.namespace] = per_namespace.get(copy.namespace, 0) + 1
        doc: dict[str, object] = {
            "request_id": self.request_id,
            "region": self.region,
            "node_id": self.node_id,
            "policy_version": self.policy_version,
            "copies_removed": len(self.removed),
            "versions_removed": self.versions_removed,
            "removed_per_namespace": dict(sorted(per_namespace.items())),
            "kept_last_copies": self.kept_last_copies,
            "completed_at": time.time(),
        }
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        if len(text) > RECEIPT_BYTES_MAX:
            # An audit detail holds 1,000 characters: the per-namespace figures are in the
            # withdrawal entries, the totals stay whole JSON.
            doc["removed_per_namespace"] = {"namespaces": len(per_namespace)}
            text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return text


def plan_withdrawals(
    engine: StorageEngine,
    policy: PlacementPolicy,
    cluster: ClusterSpec,
    region: str,
    *,
    remove_last_copies: bool,
    copies_max: int = COPIES_PER_RUN_MAX,
) -> Plan:
    """Every live version this region may not hold, by key, judged as the scanner judges it (a
    store for the copies accepted here, a replication for the others). Blocks: thread-safe
    reads only."""
    plan = Plan()
    for namespace in engine.namespaces():
        known = cluster.find_namespace(namespace) is not None
        start_after = ""
        while True:
            rows = engine.scan(namespace, "", start_after, PAGE_KEYS)
            for key, state in rows:
                dots: list[Dot] = []
                first: ComplianceViolation | None = None
                subject = ""
                for v in state.live():
                    if known:
                        action = Action.STORE if v.origin_region == region else Action.REPLICATE
                        facts = RecordFacts(namespace, v.classification, v.subject_id, v.subject_jurisdiction)
                        decision = policy.decide(facts, region, action)
                        if decision.allowed:
                            continue
                        rule, reason, allowed = decision.rule, decision.reason, decision.allowed_regions
                    else:
                        rule, allowed = RULE_UNKNOWN_NAMESPACE, ()
                        reason = f"namespace {namespace} is not in the cluster configuration any more"
                    dots.append(v.dot)
                    subject = subject or v.subject_id
                    if first is None or (first.allowed_regions and not allowed):
                        # A key is a last copy if any of its forbidden versions may be nowhere.
                        first = ComplianceViolation(
                            namespace=namespace,
                            key=key,
                            region=region,
                            origin_region=v.origin_region,
                            classification=v.classification,
                            subject_jurisdiction=v.subject_jurisdiction,
                            rule=rule,
                            reason=reason,
                            allowed_regions=tuple(allowed),
                        )
                if first is None:
                    continue
                copy = Copy(namespace, key, tuple(dots), subject, first)
                if copy.last_copy and not remove_last_copies:
                    plan.kept_last_copies += 1
                    continue
                plan.copies.append(copy)
                if len(plan.copies) >= copies_max:
                    return plan
            if len(rows) < PAGE_KEYS:
                break
            start_after = rows[-1][0]
    return plan


class Remediator:
    def __init__(
        self,
        *,
        node_id: str,
        region: str,
        audit: AuditSink,
        on_withdrawn: Callable[[list[tuple[str, str]]], None] = lambda keys: None,
    ) -> None:
        self.node_id = node_id
        self.region = region
        self.audit = audit
        # Told the keys whose state changed (the digest trees, the read cache), as a commit's are.
        self.on_withdrawn = on_withdrawn

    @staticmethod
    def request_id(asked: str) -> str:
        return asked or f"remediation-{uuid.uuid4().hex[:16]}"

    async def apply(
        self,
        plan: Plan,
        *,
        request_id: str,
        principal: str,
        policy_version: str,
        withdraw: Callable[[Sequence[Copy]], Awaitable[list[tuple[str, str, int]]]],
    ) -> Receipt:
        """Audits every removal, then removes (`withdraw` runs the engine's withdraw for each
        copy on the writer thread and returns what it removed), then records the receipt."""
        receipt = Receipt(request_id, self.region, self.node_id, policy_version, principal)
        receipt.kept_last_copies = plan.kept_last_copies
        entries = [
            self.audit.record(
                principal=principal,
                action=WITHDRAW,
                namespace=c.namespace,
                key=c.key,
                subject_id=c.subject_id,
                decision="remove",
                rule=c.violation.rule,
                policy_version=policy_version,
                detail=(
                    f"request={request_id} versions="
                    + ",".join(f"{d.node_id}:{d.counter}" for d in c.dots)
                    + f" stays_in={','.join(c.violation.allowed_regions) or 'none'}"
                )[:1000],
            )
            for c in plan.copies
        ]
        # Write-ahead: what the trail cannot record does not happen.
        if entries:
            await asyncio.gather(*entries)
        removed = await withdraw(plan.copies) if plan.copies else []
        by_key = {(ns, key): n for ns, key, n in removed}
        receipt.removed = [c for c in plan.copies if (c.namespace, c.key) in by_key]
        receipt.versions_removed = sum(by_key.values())
        if removed:
            self.on_withdrawn([(ns, key) for ns, key, _ in removed])
        receipt.receipt_seq = await self.audit.record(
            principal=principal,
            action=RECEIPT,
            decision="remove",
            policy_version=policy_version,
            detail=receipt.body(),
        )
        return receipt


def withdraw_copies(
    engine: StorageEngine, copies: Sequence[Copy], still_forbidden: Callable[[str, Version], bool]
) -> list[tuple[str, str, int]]:
    """On the writer thread: each copy's versions out of this store, those the policy in force
    now still forbids (a loosening may have come since the plan); (namespace, key, versions
    removed) for each key that still held some."""
    out: list[tuple[str, str, int]] = []
    for c in copies:
        before = engine.get(c.namespace, c.key)
        if before is None:
            continue
        dots = [v.dot for v in before.versions if v.dot in c.dots and still_forbidden(c.namespace, v)]
        after = engine.withdraw(c.namespace, c.key, dots) if dots else None
        if after is not None:
            out.append((c.namespace, c.key, len(before.versions) - len(after.versions)))
    return out


def forbidden_here(
    policy: PlacementPolicy, cluster: ClusterSpec, region: str
) -> Callable[[str, Version], bool]:
    """Whether the policy forbids a version here, as the plan judges it."""

    def check(namespace: str, v: Version) -> bool:
        if cluster.find_namespace(namespace) is None:
            return True
        action = Action.STORE if v.origin_region == region else Action.REPLICATE
        facts = RecordFacts(namespace, v.classification, v.subject_id, v.subject_jurisdiction)
        return not policy.decide(facts, region, action).allowed

    return check
