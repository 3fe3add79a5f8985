"""One decision function for every path: write, delete, read, replication at both ends.

Each call asks the policy in force, counts the decision, and writes it to the region's audit
trail. Every refusal is audited; allowed decisions are audited for writes, replication, and
reads of personal data (reads of data about no person are counted, not logged: they are the
bulk of the traffic and the law asks nothing of them).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from prometheus_client import Counter

from domicile.audit import AuditEntry
from domicile.model import Classification
from domicile.policy import Action, Decision, PlacementPolicy, RecordFacts
from node.metrics import NodeMetrics
from node.topology_view import TopologyView

# Classifications whose reads are logged; a record with a subject id is logged whatever its
# classification. UNSPECIFIED counts as personal, as in the policy.
PERSONAL = frozenset(
    {
        Classification.UNSPECIFIED,
        Classification.PERSONAL,
        Classification.SENSITIVE_PERSONAL,
        Classification.FINANCIAL,
    }
)


# (namespace, classification, subject jurisdiction, region, action): all a decision depends on.
_DecisionKey = tuple[str, Classification, str, str, str]
# Bounds the map whatever the jurisdictions records claim; it starts again when full.
DECISIONS_CACHED_MAX = 4096


class AuditSink(Protocol):
    """What the enforcer needs of node.compliance.audit_log.AuditLog."""

    def record(
        self,
        *,
        principal: str,
        action: str,
        namespace: str = "",
        key: str = "",
        subject_id: str = "",
        decision: str = "",
        rule: str = "",
        policy_version: str = "",
        detail: str = "",
        urgent: bool = True,
    ) -> asyncio.Future[int]: ...

    def entry(
        self,
        *,
        principal: str,
        action: str,
        namespace: str = "",
        key: str = "",
        subject_id: str = "",
        decision: str = "",
        rule: str = "",
        policy_version: str = "",
        detail: str = "",
    ) -> AuditEntry: ...


class Audit:
    """Names of the audited actions."""

    PUT = "put"
    DELETE = "delete"
    READ = "read"
    REPLICATE_SEND = "replicate_send"  # decision allow: sent; refuse: withheld at the source
    REPLICATE_RECEIVE = "replicate_receive"  # decision allow: applied; refuse: refused at the target
    POLICY_CHANGE = "policy_change"
    AUDIT_READ = "audit_read"
    COMPLIANCE_SCAN = "compliance_scan"
    # A call the caller's identity, roles or declared purpose do not allow (or no identity at all).
    ACCESS_DENIED = "access_denied"


def is_personal(facts: RecordFacts) -> bool:
    return bool(facts.subject_id) or facts.classification in PERSONAL


class Enforcer:
    def __init__(self, *, region: str, view: TopologyView, metrics: NodeMetrics, audit: AuditSink) -> None:
        self.region = region
        self.view = view
        self.metrics = metrics
        self.audit = audit
        # The labelled counter of each (action, outcome, rule) seen: labels() costs more than
        # the increment, and every record of a write or a replicated batch is counted.
        self._counts: dict[tuple[str, str, str], Counter] = {}
        # The decisions of the policy in force, by what they depend on (PlacementPolicy): a
        # batch asks the same question for each of its records. A new policy (a topology with
        # a new revision) starts an empty map; the pair is replaced whole, so a decision of
        # the old policy can only land in the old map.
        self._decisions: tuple[PlacementPolicy | None, dict[_DecisionKey, Decision]] = (None, {})

    def _count(self, action: str, outcome: str, rule: str) -> None:
        key = (action, outcome, rule)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = self.metrics.policy_decisions.labels(action, outcome, rule)
        counter.inc()

    def _decide(self, facts: RecordFacts, region: str, action: str) -> Decision:
        policy = self.view.policy
        cached_for, decisions = self._decisions
        if cached_for is not policy:
            decisions = {}
            self._decisions = (policy, decisions)
        key = (facts.namespace, facts.classification, facts.subject_jurisdiction, region, action)
        decision = decisions.get(key)
        if decision is None:
            decision = policy.decide(facts, region, action)
            if len(decisions) >= DECISIONS_CACHED_MAX:
                decisions.clear()
            decisions[key] = decision
        return decision

    @property
    def policy_version(self) -> str:
        return self.view.policy.version

    def decide(
        self,
        facts: RecordFacts,
        action: str,
        *,
        audit_action: str,
        principal: str,
        key: str,
        region: str | None = None,
        detail: str = "",
        always_audit: bool = True,
    ) -> tuple[Decision, asyncio.Future[int] | None]:
        """Decides `action` for this record at `region` (this node's by default), counts it and
        audits it. Returns the decision and the audit entry's future (None when not logged):
        await it where the caller promises durability of the trail (writes, replication)."""
        decision = self._decide(facts, region or self.region, action)
        self._count(action, decision.outcome, decision.rule)
        entry: asyncio.Future[int] | None = None
        if always_audit or not decision.allowed or decision.redacted_fields or is_personal(facts):
            entry = self.audit.record(
                principal=principal,
                action=audit_action,
                namespace=facts.namespace,
                key=key,
                subject_id=facts.subject_id,
                decision=decision.outcome,
                rule=decision.rule,
                policy_version=self.view.policy.version,
                detail=detail,
            )
        return decision, entry

    def decide_write(
        self, facts: RecordFacts, *, audit_action: str, principal: str, key: str
    ) -> tuple[Decision, AuditEntry | None]:
        """Decides whether this region may store a local write whose commit carries its audit
        entry: a refusal is audited at once; an allowed decision's entry is returned, not yet
        recorded, for the commit to carry (it reaches the audit log with the write)."""
        decision, made = self.decide_carried(
            facts, Action.STORE, audit_action=audit_action, principal=principal, key=key
        )
        return decision, made if isinstance(made, AuditEntry) else None

    def decide_carried(
        self,
        facts: RecordFacts,
        action: str,
        *,
        audit_action: str,
        principal: str,
        key: str,
        detail: str = "",
    ) -> tuple[Decision, AuditEntry | asyncio.Future[int]]:
        """decide() for a record whose commit carries its audit entry (a replicated apply on an
        engine that carries entries): a refusal is audited at once (its entry's future is
        returned, to await); an allowed decision's entry is returned, not yet recorded, for the
        commit to carry."""
        decision = self._decide(facts, self.region, action)
        self._count(action, decision.outcome, decision.rule)
        # Both ways take the same fields; passed as they are (no dict): every record of a
        # batch makes one.
        make = self.audit.entry if decision.allowed else self.audit.record
        made = make(
            principal=principal,
            action=audit_action,
            namespace=facts.namespace,
            key=key,
            subject_id=facts.subject_id,
            decision=decision.outcome,
            rule=decision.rule,
            policy_version=self.view.policy.version,
            detail=detail,
        )
        return decision, made

    def refusal(
        self,
        facts: RecordFacts,
        *,
        action: str,
        audit_action: str,
        principal: str,
        key: str,
        rule: str,
        detail: str,
    ) -> asyncio.Future[int]:
        """Audits a refusal that no policy decision made (a record of an unknown namespace, a
        record of an erased subject)."""
        self._count(action, "refuse", rule)
        return self.audit.record(
            principal=principal,
            action=audit_action,
            namespace=facts.namespace,
            key=key,
            subject_id=facts.subject_id,
            decision="refuse",
            rule=rule,
            policy_version=self.view.policy.version,
            detail=detail,
        )

    def event(self, action: str, *, principal: str, detail: str = "") -> asyncio.Future[int]:
        """Audits something that is not a decision about a record (a policy change, a read of
        the audit log)."""
        return self.audit.record(
            principal=principal, action=action, policy_version=self.view.policy.version, detail=detail
        )
