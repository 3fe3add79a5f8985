"""Replicated records refused at commit, and their audit entries: those the erasure recheck
refuses, and those the engine cannot store (a key state past MongoDB's document limit).

A replicated record (streamed, or an anti-entropy or bootstrap repair) is admitted (policy
decided, erasure block checked, its replicate_receive allow entry made) before it is sealed and
committed. An erasure that runs in between has read
the subject's keys already, so the apply checks the block again on the writer thread and leaves
out what it now blocks. The audit trail must then say that the record was refused, not only
that it was allowed, since an allow entry of replicate_receive means the record was applied:

- where the apply's commit carries its audit entries (the SQLite engine), the allow entry is not
  yet written: the commit carries the refusal entry in its place, so the trail holds exactly one
  entry per record, and it is durable with the apply;
- otherwise the allow entry was made durable before the apply (write-ahead), and an entry of a
  hash-chained log cannot be taken back: the refusal entry follows it, durable before the batch
  is acknowledged, and supersedes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from domicile.audit import TEXT_CHARS_MAX, AuditEntry
from domicile.causality import Mutation
from domicile.cluster import ClusterSpec
from domicile.policy import Action, RecordFacts
from domicile.subjects import LegalHold
from domicile.topology import Topology
from node.compliance.enforcer import Audit, Enforcer

RULE = "subject-erased"
# A key state the engine refused as too large to store (node.engine.base.StateTooLarge).
RULE_TOO_LARGE = "state-too-large"

Blocks = Callable[[ClusterSpec, tuple[LegalHold, ...], str, str, str], str]


@dataclass(frozen=True)
class LateRefusal:
    mutation: Mutation
    request_id: str  # the erasure's; "" for another rule
    # How the record came when not by a stream (a repair: "antientropy", "bootstrap"); "": a stream.
    via: str = ""
    rule: str = RULE
    why: str = ""  # for a rule other than RULE: what was refused, as the engine said it


def too_large(
    mutations: Sequence[Mutation], namespace: str, key: str, why: str, *, via: str = ""
) -> tuple[list[Mutation], list[LateRefusal]]:
    """The mutations of other keys, and the refusals of the key whose state the engine cannot
    store: refused alone, so that the rest of the batch is applied and the link goes on."""
    kept: list[Mutation] = []
    refused: list[LateRefusal] = []
    for m in mutations:
        if (m.namespace, m.key) == (namespace, key):
            refused.append(LateRefusal(m, "", via, RULE_TOO_LARGE, why))
        else:
            kept.append(m)
    return kept, refused


def recheck(
    blocks: Blocks, topology: Topology, admitted: Sequence[Mutation], *, via: str = ""
) -> tuple[list[Mutation], list[LateRefusal]]:
    """The admitted mutations the erasure block still lets in, and those it now refuses (with
    the erasure request). Tombstones always pass. `via`: how a repair came ("" for a stream)."""
    still: list[Mutation] = []
    late: list[LateRefusal] = []
    for m in admitted:
        erased_by = (
            ""
            if m.version.tombstone
            else blocks(topology.cluster, topology.holds, m.namespace, m.key, m.version.subject_id)
        )
        if erased_by:
            late.append(LateRefusal(m, erased_by, via))
        else:
            still.append(m)
    return still, late


def _detail(source_node_id: str, refused: LateRefusal) -> str:
    m = refused.mutation
    # As the record's admission entry names it (Receiver._admit).
    if refused.via:
        where = f"{refused.via} dot={m.version.dot.node_id}:{m.version.dot.counter}"
    else:
        where = f"lsn={m.lsn}"
    if refused.rule != RULE:
        return f"from={source_node_id} {where} refused at commit: {refused.why}".strip()[:TEXT_CHARS_MAX]
    return detail(f"from={source_node_id} {where}", refused.request_id)


def detail(where: str, request_id: str) -> str:
    """The detail of a refusal entry of a record refused at commit (a replicated one here, a
    local write in node.service), after what names the record in its allow entry (`where`)."""
    text = (
        f"{where} request={request_id} refused at commit: the subject was erased after the record "
        "was admitted"
    )
    return text.strip()[:TEXT_CHARS_MAX]


def carried_with_refusals(
    enforcer: Enforcer,
    source_node_id: str,
    admitted: Sequence[Mutation],
    carried: Sequence[AuditEntry],
    late: Sequence[LateRefusal],
) -> list[AuditEntry]:
    """The entries the apply's commit carries: each refused record's refusal entry in place of
    its allow entry. `carried` holds one allow entry per admitted mutation, in their order
    (Receiver._admit). Runs on the writer thread."""
    refusals = {
        id(r.mutation): enforcer.audit.entry(
            principal=f"node:{source_node_id}",
            action=Audit.REPLICATE_RECEIVE,
            namespace=r.mutation.namespace,
            key=r.mutation.key,
            subject_id=r.mutation.version.subject_id,
            decision="refuse",
            rule=r.rule,
            policy_version=enforcer.policy_version,
            detail=_detail(source_node_id, r),
        )
        for r in late
    }
    if len(carried) != len(admitted):
        # Not one entry per mutation: no allow entry can be told apart, so each stays and the
        # refusals follow them (still a true trail, as where the entries are not carried).
        return [*carried, *refusals.values()]
    return [refusals.get(id(m), entry) for m, entry in zip(admitted, carried, strict=True)]


def count_carried(enforcer: Enforcer, late: Sequence[LateRefusal]) -> None:
    """Counts the carried refusals among the policy decisions, as Enforcer.refusal counts those
    it records. On the event loop."""
    for r in late:
        enforcer.metrics.policy_decisions.labels(Action.REPLICATE, "refuse", r.rule).inc()


def record_refusals(
    enforcer: Enforcer, source_node_id: str, late: Sequence[LateRefusal]
) -> list[asyncio.Future[int]]:
    """Records the refusal entries after the apply (where the commit did not carry them); await
    them before the batch is acknowledged. On the event loop."""
    return [
        enforcer.refusal(
            RecordFacts(
                r.mutation.namespace,
                r.mutation.version.classification,
                r.mutation.version.subject_id,
                r.mutation.version.subject_jurisdiction,
            ),
            action=Action.REPLICATE,
            audit_action=Audit.REPLICATE_RECEIVE,
            principal=f"node:{source_node_id}",
            key=r.mutation.key,
            rule=r.rule,
            detail=_detail(source_node_id, r),
        )
        for r in late
    ]
