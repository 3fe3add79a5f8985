"""Remediation after the policy tightens: remove, in this region only, the record copies the
policy in force no longer lets it hold.

The dangerous part is not removing: it is removing only here. A Delete would write a tombstone
that replicates like any write, and the regions that may still hold the record would delete
their allowed copies. So a remediation writes no tombstone and no change-log entry: it takes
the forbidden versions out of the key's state in this store (engine `withdraw`,
domicile.causality.withdraw), their dots out of its causal context too, and those of their
twins (a client write retried on other nodes), so that nothing this node sends later (a stream,
an anti-entropy answer, a context token a client writes back) names them and supersedes them
elsewhere. If the policy loosens again, the backfill brings them back, because the context no
longer claims to have seen them.

A version a legal hold covers is never removed, with or without remove_last_copies: a hold
means the data must be preserved (litigation), and removing the copy would destroy evidence.
The copy stays a violation (the scanner reports it, naming the hold) until the hold is released
and a later remediation removes it. Holds are matched per version, as an erasure matches them
(domicile.subjects.hold_covering), and once more, with the holds in force when the removal
starts, so a hold placed while the run plans counts (its copy's "remove" entry was written
ahead, as for a copy a loosened policy keeps: the receipt says what was removed).

Each removal is audited before it happens (write-ahead, as a write is), and so is each copy a
hold keeps (decision "keep", naming the hold); the run ends with a receipt entry in the trail:
what was removed, per namespace, what was kept, under which policy, by whom.
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
from domicile.policy import PlacementPolicy
from domicile.results import ComplianceViolation
from domicile.subjects import LegalHold
from node.compliance.enforcer import AuditSink
from node.compliance.scanner import Judge
from node.engine.base import StorageEngine

PAGE_KEYS = 1000
# Copies one remediation removes at most; a later run removes the rest (each run is bounded in
# memory and in the time it holds the scan lock).
COPIES_PER_RUN_MAX = 100_000
WITHDRAW = "compliance_withdraw"
RECEIPT = "compliance_remediation_receipt"
# What an audit entry's detail holds.
RECEIPT_BYTES_MAX = 1000


@dataclass(frozen=True)
class Copy:
    """The versions of one key this region may no longer hold (those a legal hold covers apart:
    their violation names the hold)."""

    namespace: str
    key: str
    dots: tuple[Dot, ...]
    subject_id: str
    violation: ComplianceViolation

    @property
    def last_copy(self) -> bool:
        return not self.violation.allowed_regions

    @property
    def held(self) -> bool:
        return self.violation.held

    def versions(self) -> str:
        return ",".join(f"{d.node_id}:{d.counter}" for d in self.dots)


@dataclass
class Plan:
    copies: list[Copy] = field(default_factory=list)
    kept_last_copies: int = 0
    # The copies legal holds keep: listed up to the run's bound, counted in full.
    held: list[Copy] = field(default_factory=list)
    kept_held: int = 0


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
    held: list[Copy] = field(default_factory=list)
    kept_held: int = 0
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
            "kept_held": self.kept_held,
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
    holds: tuple[LegalHold, ...] = (),
    copies_max: int = COPIES_PER_RUN_MAX,
) -> Plan:
    """Every live version this region may not hold, by key, judged as the scanner judges it (a
    store for the copies accepted here, a replication for the others); the versions a legal
    hold covers go to `held`, never to `copies`. Blocks: thread-safe reads only."""
    judge = Judge(policy, cluster, region, holds)
    plan = Plan()
    for namespace in engine.namespaces():
        known = judge.known(namespace)
        start_after = ""
        while True:
            rows = engine.scan(namespace, "", start_after, PAGE_KEYS)
            for key, state in rows:
                judged = [(v, judge.violation(namespace, key, v, known)) for v in state.live()]
                forbidden = [(v, c) for v, c in judged if c is not None]
                _plan_key(plan, namespace, key, forbidden, remove_last_copies, copies_max)
                if len(plan.copies) >= copies_max:
                    return plan
            if len(rows) < PAGE_KEYS:
                break
            start_after = rows[-1][0]
    return plan


def _plan_key(
    plan: Plan,
    namespace: str,
    key: str,
    forbidden: list[tuple[Version, ComplianceViolation]],
    remove_last_copies: bool,
    copies_max: int,
) -> None:
    held = [(v, c) for v, c in forbidden if c.held]
    loose = [(v, c) for v, c in forbidden if not c.held]
    if held:
        plan.kept_held += 1
        # Bounded like the removals; the count stays whole.
        if len(plan.held) < copies_max:
            plan.held.append(_copy(namespace, key, held))
    if not loose:
        return
    copy = _copy(namespace, key, loose)
    if copy.last_copy and not remove_last_copies:
        plan.kept_last_copies += 1
        return
    plan.copies.append(copy)


def _copy(namespace: str, key: str, versions: list[tuple[Version, ComplianceViolation]]) -> Copy:
    # A key is a last copy if any of its forbidden versions may be nowhere.
    violation = next((c for _, c in versions if not c.allowed_regions), versions[0][1])
    subject = next((v.subject_id for v, _ in versions if v.subject_id), "")
    return Copy(namespace, key, tuple(v.dot for v, _ in versions), subject, violation)


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
        receipt.held, receipt.kept_held = plan.held, plan.kept_held
        entries = [
            self._decision(c, request_id, principal, policy_version) for c in [*plan.held, *plan.copies]
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

    def _decision(self, c: Copy, request_id: str, principal: str, policy_version: str) -> asyncio.Future[int]:
        """One copy's entry: "remove", or "keep" with the hold that keeps it."""
        detail = f"request={request_id} versions={c.versions()}"
        if c.held:
            detail += f" held: {c.violation.hold_reason}"
        else:
            detail += f" stays_in={','.join(c.violation.allowed_regions) or 'none'}"
        return self.audit.record(
            principal=principal,
            action=WITHDRAW,
            namespace=c.namespace,
            key=c.key,
            subject_id=c.subject_id,
            decision="keep" if c.held else "remove",
            rule=c.violation.rule,
            policy_version=policy_version,
            detail=detail[:1000],
        )


def withdraw_copies(
    engine: StorageEngine, copies: Sequence[Copy], may_go: Callable[[str, str, Version], bool]
) -> list[tuple[str, str, int]]:
    """On the writer thread: each copy's versions out of this store, those that may still go now
    (a loosening or a hold may have come since the plan); (namespace, key, versions removed) for
    each key that still held some."""
    out: list[tuple[str, str, int]] = []
    for c in copies:
        before = engine.get(c.namespace, c.key)
        if before is None:
            continue
        dots = [v.dot for v in before.versions if v.dot in c.dots and may_go(c.namespace, c.key, v)]
        after = engine.withdraw(c.namespace, c.key, dots) if dots else None
        if after is not None:
            out.append((c.namespace, c.key, len(before.versions) - len(after.versions)))
    return out


def withdrawable(
    policy: PlacementPolicy, cluster: ClusterSpec, region: str, holds: tuple[LegalHold, ...]
) -> Callable[[str, str, Version], bool]:
    """Whether a version may be withdrawn here, as the plan judges it: the policy forbids it
    here and no legal hold covers it."""
    judge = Judge(policy, cluster, region, holds)

    def check(namespace: str, key: str, v: Version) -> bool:
        violation = judge.violation(namespace, key, v, judge.known(namespace))
        return violation is not None and not violation.held

    return check
