"""The enforcer asks the policy in force once per kind of record, and a new policy at once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from domicile.audit import AuditEntry
from domicile.model import Classification
from domicile.policy import Action, Decision, RecordFacts
from node.compliance.enforcer import Enforcer
from node.metrics import NodeMetrics


@dataclass
class CountingPolicy:
    """Allows what its `allowed` says, counting the questions it was asked."""

    version: str
    allowed: bool
    asked: list[tuple[RecordFacts, str, str]] = field(default_factory=list)

    def decide(self, facts: RecordFacts, region: str, action: str) -> Decision:
        self.asked.append((facts, region, action))
        return Decision(self.allowed, f"rule-{self.version}", "because", ("eu",))


@dataclass
class View:
    policy: CountingPolicy


class Audit:
    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    def entry(self, **fields: str) -> AuditEntry:
        self.entries.append(fields)
        return AuditEntry(0, 1, 1, "eu", "n1", fields["principal"], fields["action"], rule=fields["rule"])

    def record(self, **fields: str) -> asyncio.Future[int]:
        self.entries.append(fields)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(1)
        return future


async def test_one_question_per_kind_of_record_and_a_new_policy_is_asked_at_once() -> None:
    view = View(CountingPolicy("v1", allowed=True))
    audit = Audit()
    enforcer = Enforcer(region="eu", view=view, metrics=NodeMetrics("n1", "eu"), audit=audit)  # type: ignore[arg-type]
    personal = RecordFacts("orders", Classification.PERSONAL, "alice", "DE")
    for subject in ("alice", "bob", "carol"):
        decision, entry = enforcer.decide_write(
            RecordFacts("orders", Classification.PERSONAL, subject, "DE"),
            audit_action="put",
            principal="p",
            key="k",
        )
        assert decision.allowed and isinstance(entry, AuditEntry) and entry.rule == "rule-v1"
    assert len(view.policy.asked) == 1  # the subject id changes nothing
    # Another jurisdiction, classification, namespace, region or action is another question.
    enforcer.decide_write(
        RecordFacts("orders", Classification.PERSONAL, "a", "FR"), audit_action="put", principal="p", key="k"
    )
    enforcer.decide_write(
        RecordFacts("orders", Classification.FINANCIAL, "a", "DE"), audit_action="put", principal="p", key="k"
    )
    enforcer.decide_write(
        RecordFacts("events", Classification.PERSONAL, "a", "DE"), audit_action="put", principal="p", key="k"
    )
    enforcer.decide(personal, Action.STORE, audit_action="put", principal="p", key="k", region="us")
    enforcer.decide(personal, Action.READ, audit_action="read", principal="p", key="k")
    assert len(view.policy.asked) == 6
    # Every record is still audited, each with its own subject.
    assert [e["subject_id"] for e in audit.entries[:3]] == ["alice", "bob", "carol"]
    # A new policy (a new revision) decides the next record: nothing of the old one is reused.
    view.policy = CountingPolicy("v2", allowed=False)
    decision, entry = enforcer.decide_write(personal, audit_action="put", principal="p", key="k")
    assert not decision.allowed and decision.rule == "rule-v2" and entry is None
    assert len(view.policy.asked) == 1
    assert audit.entries[-1]["decision"] == "refuse" and audit.entries[-1]["policy_version"] == "v2"
