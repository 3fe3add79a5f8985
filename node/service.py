"""The node's storage operations in domain terms: checks, policy, commit, read.
The gRPC servicer (node/api/storage.py) only translates to and from this."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from domicile import errors, quality
from domicile.audit import AuditEntry
from domicile.causality import CausalContext, KeyState, Version, sha256, visible
from domicile.cluster import NamespaceSpec
from domicile.context_tokens import KEY_BYTES, ContextTokens
from domicile.memo import remember
from domicile.model import (
    Classification,
    ConflictMode,
    Limits,
    check_jurisdiction,
    check_key,
    check_namespace_name,
    check_request_id,
    check_value,
)
from domicile.policy import Action, Decision, RecordFacts
from domicile.policy.jurisdiction import parse_jurisdiction
from domicile.subjects import check_subject_text
from domicile.wire.limits import PUT_BATCH_RECORDS_MAX
from node.cache.hit_plans import PLANS_MAX, HitPlan, HitPlans
from node.cache.read_cache import Hit, Pending, ReadAhead, ReadCache
from node.clock_guard import ClockGuard
from node.compliance.enforcer import Audit, Enforcer
from node.compliance.redaction import redact
from node.crypto.sealing import Sealer, answered_value_bytes
from node.engine.base import Committed, LocalWrite, StorageEngine, answer_bytes, request_digest
from node.engine.group_commit import GroupCommitter
from node.lifecycle.erasure import ErasedInFlight, Eraser
from node.metrics import NodeMetrics
from node.offload import Offload
from node.replication import late_refusals
from node.topology_view import TopologyView

# A Put ready to commit: its namespace, its write, and its audit entry (carried by the commit)
# or the recorded entry's future (awaited before the commit).
_Prepared = tuple[NamespaceSpec, LocalWrite, "asyncio.Future[int] | AuditEntry | None"]

# The share of the request deadline a write waits for other regions (the rest is for the answer).
SYNC_WAIT_SHARE = 0.8


# Not frozen, as LocalWrite (node.engine.base): built once per record; treat it as immutable.
@dataclass(slots=True)
class PutCommand:
    namespace: str
    key: str
    value: bytes
    content_type: str = ""
    context: CausalContext | None = None
    subject_id: str = ""
    subject_jurisdiction: str = ""
    classification: Classification = Classification.UNSPECIFIED
    principal: str = ""
    # The client's id of the logical write; a retry with the same id is written once.
    request_id: str = ""


@dataclass(frozen=True)
class DeleteCommand:
    namespace: str
    key: str
    context: CausalContext | None = None
    # Used only when this node holds no version of the key (see facts_for_delete).
    subject_id: str = ""
    subject_jurisdiction: str = ""
    principal: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class ReadResult:
    found: bool
    versions: tuple[Version, ...]
    context: CausalContext
    # Per version, the fields the policy removed from this answer (empty when none).
    redacted: tuple[tuple[str, ...], ...] = ()
    # What the state and the versions answered follow from, when that is small and exact: the
    # cache entry's bytes a hit was decoded from and the namespace's conflict mode (which picks
    # the visible versions); None otherwise. With the redaction, the namespace and the key it
    # determines the whole answer (node/api/read_answers.py).
    source: tuple[bytes, ConflictMode] | None = None


@dataclass(frozen=True)
class ScanPage:
    items: list[tuple[str, ReadResult]]
    next_page_token: str


class StorageService:
    def __init__(
        self,
        *,
        node_id: str,
        region: str,
        engine: StorageEngine,
        committer: GroupCommitter,
        view: TopologyView,
        enforcer: Enforcer,
        sealer: Sealer,
        eraser: Eraser,
        limits: Limits,
        metrics: NodeMetrics,
        on_committed: Callable[[], None] = lambda: None,
        offload: Offload | None = None,
        tokens: ContextTokens | None = None,
        cache: ReadCache | None = None,
        carry_audit: bool = False,
        clock_guard: ClockGuard | None = None,
    ) -> None:
        self.node_id = node_id
        # Refuses writes while this node's clock runs further ahead than peers accept.
        self.clock_guard = clock_guard
        self.region = region
        self.engine = engine
        self.committer = committer
        self.view = view
        self.enforcer = enforcer
        self.sealer = sealer
        self.eraser = eraser
        self.limits = limits
        self.metrics = metrics
        # Wakes the replication senders: the change log has grown.
        self.on_committed = on_committed
        # Reads and opening sealed values block: each request makes one hop to these threads.
        self.offload = offload or Offload()
        # Causal contexts go to clients as tokens of the cluster key (without one: a key of this
        # process only, so that no token of it verifies anywhere else).
        self.tokens = tokens or ContextTokens(secrets.token_bytes(KEY_BYTES))
        # The region's read cache of sealed key states (node/cache/), when configured: Get asks
        # it before the engine; everything after the state is read (opening, policy) is the same.
        self.cache = cache
        # What a hit answers, by its entry's bytes (node/cache/hit_plans.py).
        self.hit_plans = HitPlans()
        # A planned hit's last answer, by its plan's id: (the plan, the decisions, the answer).
        self._planned_answers: dict[int, tuple[HitPlan, tuple[Decision, ...], ReadResult]] = {}
        # The engine commits a write's audit entry with the write (one fsync per write); else
        # the write waits until its entry is durable in the audit log first.
        self.carry_audit = carry_audit
        self.started = time.monotonic()
        self.conflicts_total = 0
        self.quality = quality.QualityFigures()
        # Waits until a number of regions hold a change-log entry (namespace, lsn, regions,
        # timeout_s) and returns how many do: replication's, set by the daemon. Without it only
        # namespaces with min_regions_acked 1 can be written.
        self.wait_regions: Callable[[str, int, int, float], Awaitable[int]] | None = None

    # -- checks -------------------------------------------------------------------------------

    def _namespace(self, name: str) -> NamespaceSpec:
        check_namespace_name(name)
        return self.view.topology.cluster.namespace(name)

    def _classification(self, spec: NamespaceSpec, requested: Classification) -> Classification:
        if requested is Classification.UNSPECIFIED:
            return spec.classification
        floor = spec.classification_floor
        if requested.strictness < floor.strictness:
            raise errors.InvalidArgument(
                f"classification {requested.label} is looser than the namespace default "
                f"{spec.classification.label} of {spec.name}"
                + (" (unknown to this node, judged as personal)" if floor is not spec.classification else "")
                + "; a record may be stricter, never looser"
            )
        return requested

    def _check_placement(
        self, spec: NamespaceSpec, facts: RecordFacts, key: str, audit_action: str, principal: str
    ) -> asyncio.Future[int] | AuditEntry | None:
        """Refuses (audited) when this region may not hold the record; returns the audit entry
        of the allowed decision: the entry the commit carries, or (when the engine does not
        carry entries) the recorded entry's future, which the caller awaits before the commit."""
        decision: Decision
        entry: asyncio.Future[int] | AuditEntry | None
        if self.carry_audit:
            decision, entry = self.enforcer.decide_write(
                facts, audit_action=audit_action, principal=principal, key=key
            )
        else:
            decision, entry = self.enforcer.decide(
                facts, Action.STORE, audit_action=audit_action, principal=principal, key=key
            )
        if not decision.allowed:
            self.metrics.placement_refused.labels(spec.name, decision.rule).inc()
            raise errors.PlacementRefused(
                f"region {self.region} may not hold this record: {decision.reason}",
                decision.allowed_regions,
                decision.rule,
            )
        return entry

    def _check_not_erased(self, facts: RecordFacts, key: str, principal: str) -> None:
        waiting = self.eraser.waiting_refusal(facts.subject_id)
        if waiting is not None:
            raise waiting
        request_id = self.eraser.erased_by(facts.subject_id)
        if request_id:
            self.enforcer.refusal(
                facts,
                action=Action.STORE,
                audit_action=Audit.PUT,
                principal=principal,
                key=key,
                rule="subject-erased",
                detail=f"request={request_id}",
            )
            raise errors.FailedPrecondition(
                f"this data subject was erased by request {request_id}; records about them are not "
                "accepted any more (a new relationship needs a new subject id)"
            )

    async def _commit(
        self,
        write: LocalWrite,
        entry: asyncio.Future[int] | AuditEntry | None,
        principal: str,
        stored: Callable[[Committed], None] | None = None,
    ) -> Committed:
        # No write without its audit entry. Carried: the entry commits with the write, in the
        # same transaction (one fsync), and reaches the audit log from there. Otherwise the
        # entry is durable before the write is committed (write-ahead). A decision recorded for
        # a write that then fails is still a true record of the decision.
        if isinstance(entry, AuditEntry):
            if write.audit is None:
                write = dataclasses.replace(write, audit=entry)
        elif entry is not None:
            await entry
        # Only a write about a subject can be refused at commit (an erasure overtook it): it is
        # shielded, so that a caller that goes away (a deadline, a cancelled call) stops neither
        # the write on its way to the writer nor the audit of such a refusal. Other writes skip
        # the shield's task and the refusal's handler, a measured cost per Put.
        if write.subject_id:
            committed = await asyncio.shield(self._submit_audited(write, principal))
        else:
            committed = await self.committer.submit(write)
        self.on_committed()
        if stored is not None:
            # Told once the write is durable here, whether or not the regions it waits for
            # come in time.
            stored(committed)
        spec = self.view.topology.cluster.find_namespace(write.namespace)
        if spec is not None and spec.min_regions_acked > 1:
            await self._wait_regions(spec, committed)
        return committed

    async def _submit_audited(self, write: LocalWrite, principal: str) -> Committed:
        try:
            return await self.committer.submit(write)
        except ErasedInFlight as refused:
            await self._refused_at_commit(write, refused, principal)
            raise

    async def _submit_many_audited(
        self, writes: list[LocalWrite], principals: list[str]
    ) -> list[Committed | errors.DomicileError]:
        committed = await self.committer.submit_many(writes)
        refusals = [
            self._refused_at_commit(write, outcome, principal)
            for write, outcome, principal in zip(writes, committed, principals, strict=True)
            if isinstance(outcome, ErasedInFlight)
        ]
        if refusals:
            await asyncio.gather(*refusals)
        return committed

    def _refused_at_commit(
        self, write: LocalWrite, refused: ErasedInFlight, principal: str
    ) -> asyncio.Future[int]:
        """Audits a write the writer refused at commit because its subject was erased meanwhile
        (as node.replication.late_refusals does for replicated records): where the commit would
        have carried its allow entry, the entry was not written and this refusal takes its
        place; where the allow entry was durable before the commit (write-ahead), this refusal
        follows and supersedes it. Await it before answering the caller."""
        facts = RecordFacts(
            write.namespace, write.classification, write.subject_id, write.subject_jurisdiction
        )
        return self.enforcer.refusal(
            facts,
            action=Action.STORE,
            audit_action=Audit.PUT,
            principal=principal,
            key=write.key,
            rule=late_refusals.RULE,
            detail=late_refusals.detail("", refused.request_id),
        )

    async def _wait_regions(self, spec: NamespaceSpec, committed: Committed) -> None:
        """Synchronous durability: the write is acknowledged once min_regions_acked regions hold
        it. It is committed here whatever happens; when the regions do not acknowledge in time
        the caller gets UNAVAILABLE (the outcome is then unknown to it, as after a timeout) and
        a retry with the same request id waits again without writing twice."""
        lsn = committed.mutation.lsn
        if lsn == 0:
            # A retry answered with a version first written on another node: this node holds it
            # and replication carries it on; there is no entry of this node's log to wait for.
            return
        needed = spec.min_regions_acked
        timeout_s = self.limits.request_deadline_default_s * SYNC_WAIT_SHARE
        started = time.monotonic()
        holding = (
            await self.wait_regions(spec.name, lsn, needed, timeout_s) if self.wait_regions is not None else 1
        )
        self.metrics.sync_ack_wait.labels(spec.name).observe(time.monotonic() - started)
        if holding < needed:
            self.metrics.sync_ack_timeouts.labels(spec.name).inc()
            raise errors.Unavailable(
                f"{spec.name} needs {needed} regions to hold a write (min_regions_acked); {holding} "
                f"acknowledged it within {timeout_s:g} s. It is committed in {self.region} and will "
                "still replicate; retry with the same request id to wait again"
            )

    # -- operations ---------------------------------------------------------------------------

    def _check_clock(self) -> None:
        if self.clock_guard is not None:
            self.clock_guard.check()

    async def put(self, cmd: PutCommand) -> Committed:
        # Nothing to seal without a subject: prepared in line, without the sealer's coroutine.
        spec, write, entry = await self._prepare_put(cmd) if cmd.subject_id else self._prepare_in_line(cmd)
        committed = await self._commit(
            write, entry, cmd.principal, stored=lambda c: self._count_quality(spec, cmd, c)
        )
        return self._put_answer(spec, cmd, committed)

    async def put_batch(self, cmds: list[PutCommand]) -> list[Committed | errors.DomicileError]:
        """Each command as put() does it (checks, policy decision, audit entry, sealing), and
        every accepted write committed in one group. A refused command gets its error in its
        slot; the others are still written."""
        if not 1 <= len(cmds) <= PUT_BATCH_RECORDS_MAX:
            raise errors.InvalidArgument(
                f"a batch holds {len(cmds)} records; PutBatch takes 1 to {PUT_BATCH_RECORDS_MAX}"
            )
        # A record without a subject is prepared without leaving the loop (nothing to seal), so
        # it needs no task of its own; those with one are sealed concurrently in the offload pool.
        prepared: dict[int, _Prepared | errors.DomicileError] = {}
        for i, cmd in enumerate(cmds):
            if not cmd.subject_id:
                prepared[i] = self._prepare_unsealed(cmd)
        sealing = [i for i, cmd in enumerate(cmds) if cmd.subject_id]
        if sealing:
            outcomes = await asyncio.gather(*(self._prepare_or_error(cmds[i]) for i in sealing))
            prepared.update(zip(sealing, outcomes, strict=True))
        results: list[Committed | errors.DomicileError | None] = [
            p if isinstance(p, errors.DomicileError) else None
            for p in (prepared[i] for i in range(len(cmds)))
        ]
        accepted: list[tuple[int, NamespaceSpec]] = []
        writes: list[LocalWrite] = []
        for i in range(len(cmds)):
            p = prepared[i]
            if isinstance(p, errors.DomicileError):
                continue
            spec, write, entry = p
            if entry is not None and not isinstance(entry, AuditEntry):
                await entry  # write-ahead, where the engine does not carry entries
            accepted.append((i, spec))
            writes.append(write)
        if writes:
            # Shielded when a write is about a subject, as a single write's commit is (see _commit).
            principals = [cmds[i].principal for i, _ in accepted]
            submitted = self._submit_many_audited(writes, principals)
            about_subjects = any(w.subject_id for w in writes)
            committed = await (asyncio.shield(submitted) if about_subjects else submitted)
            self.on_committed()
            held: list[tuple[int, Awaitable[Committed | errors.DomicileError]]] = []
            for (i, spec), outcome in zip(accepted, committed, strict=True):
                if isinstance(outcome, errors.DomicileError):
                    results[i] = outcome
                    continue
                self._count_quality(spec, cmds[i], outcome)
                if spec.min_regions_acked > 1:
                    held.append((i, self._answer_when_held(spec, cmds[i], outcome)))
                else:
                    results[i] = self._put_answer(spec, cmds[i], outcome)
            if held:
                # Together: each waits at most as long as a single Put's would, not in turn,
                # so a batch whose records no other region acknowledges answers each of them
                # UNAVAILABLE within the call's deadline instead of failing the whole call.
                answers = await asyncio.gather(*(wait for _, wait in held))
                for (i, _), answer in zip(held, answers, strict=True):
                    results[i] = answer
        answered: list[Committed | errors.DomicileError] = []
        for r in results:
            if r is None:
                raise RuntimeError("PutBatch left a record without a result")
            answered.append(r)
        return answered

    async def _answer_when_held(
        self, spec: NamespaceSpec, cmd: PutCommand, outcome: Committed
    ) -> Committed | errors.DomicileError:
        """A batch record's answer once min_regions_acked regions hold it, or its error."""
        try:
            await self._wait_regions(spec, outcome)
            return self._put_answer(spec, cmd, outcome)
        except errors.DomicileError as error:
            return error

    async def _prepare_or_error(self, cmd: PutCommand) -> _Prepared | errors.DomicileError:
        try:
            return await self._prepare_put(cmd)
        except errors.DomicileError as error:
            return error

    async def _prepare_put(self, cmd: PutCommand) -> _Prepared:
        """Everything of a Put before its commit: checks, the placement decision and its audit
        entry, sealing. Raises the refusal of a record that may not be written."""
        spec, classification, entry = self._admit_put(cmd)
        # Encrypted at rest under the subject's data key (crypto-shredding).
        sealed = await self.sealer.seal_value(
            self.view.topology.cluster, spec.name, cmd.key, cmd.subject_id, cmd.value
        )
        return spec, self._local_put(spec, cmd, classification, sealed, entry), entry

    def _prepare_in_line(self, cmd: PutCommand) -> _Prepared:
        """_prepare_put of a record without a subject (nothing to seal), without leaving the loop."""
        spec, classification, entry = self._admit_put(cmd)
        return spec, self._local_put(spec, cmd, classification, cmd.value, entry), entry

    def _prepare_unsealed(self, cmd: PutCommand) -> _Prepared | errors.DomicileError:
        """_prepare_in_line, its refusal returned rather than raised (a batch's slot)."""
        try:
            return self._prepare_in_line(cmd)
        except errors.DomicileError as error:
            return error

    def _admit_put(
        self, cmd: PutCommand
    ) -> tuple[NamespaceSpec, Classification, asyncio.Future[int] | AuditEntry | None]:
        """The checks of a Put and its placement decision, with the decision's audit entry."""
        spec = self._namespace(cmd.namespace)
        check_key(cmd.key, self.limits)
        check_value(cmd.value, self.limits)
        if len(cmd.content_type.encode()) > self.limits.content_type_bytes_max:
            raise errors.InvalidArgument(
                f"content type is longer than {self.limits.content_type_bytes_max} bytes"
            )
        if len(cmd.subject_id.encode()) > self.limits.subject_id_bytes_max:
            raise errors.InvalidArgument(
                f"subject id is longer than {self.limits.subject_id_bytes_max} bytes"
            )
        check_subject_text(cmd.subject_id)
        self._check_jurisdiction(cmd.subject_jurisdiction)
        self._check_schema(spec, cmd)
        check_request_id(cmd.request_id)
        self._check_clock()
        classification = self._classification(spec, cmd.classification)
        facts = RecordFacts(spec.name, classification, cmd.subject_id, cmd.subject_jurisdiction)
        self._check_not_erased(facts, cmd.key, cmd.principal)
        entry = self._check_placement(spec, facts, cmd.key, Audit.PUT, cmd.principal)
        return spec, classification, entry

    def _local_put(
        self,
        spec: NamespaceSpec,
        cmd: PutCommand,
        classification: Classification,
        sealed: bytes,
        entry: asyncio.Future[int] | AuditEntry | None,
    ) -> LocalWrite:
        # In lww mode a write always supersedes everything this node holds: the winner is
        # decided by HLC, and keeping losers would only grow the state.
        supersedes = (
            None if spec.conflict_mode is ConflictMode.LWW else (cmd.context or CausalContext.empty())
        )
        return LocalWrite(
            namespace=spec.name,
            key=cmd.key,
            # Encrypted at rest under the subject's data key (crypto-shredding).
            value=sealed,
            content_type=cmd.content_type,
            supersedes=supersedes,
            subject_id=cmd.subject_id,
            subject_jurisdiction=cmd.subject_jurisdiction,
            classification=classification,
            siblings_max=spec.siblings_max,
            request_id=cmd.request_id,
            request_digest=_put_digest(cmd) if cmd.request_id else b"",
            read_bytes_max=self.limits.read_record_bytes_max,
            answered_value_bytes=answered_value_bytes,
            # Carried by the commit (the engine's audit outbox) when the engine carries entries.
            audit=entry if isinstance(entry, AuditEntry) else None,
        )

    def _put_answer(self, spec: NamespaceSpec, cmd: PutCommand, committed: Committed) -> Committed:
        self._count_conflict(spec, committed.conflict)
        if committed.mutation.version.value is cmd.value:
            return committed  # stored as written (nothing to seal): the answer is the stored version
        # Answer with the version as the client wrote it, not as it is stored (sealed).
        version = dataclasses.replace(committed.mutation.version, value=cmd.value, checksum=sha256(cmd.value))
        return dataclasses.replace(
            committed, mutation=dataclasses.replace(committed.mutation, version=version)
        )

    async def delete(self, cmd: DeleteCommand) -> Committed:
        spec = self._namespace(cmd.namespace)
        check_key(cmd.key, self.limits)
        if len(cmd.subject_id.encode()) > self.limits.subject_id_bytes_max:
            raise errors.InvalidArgument(
                f"subject id is longer than {self.limits.subject_id_bytes_max} bytes"
            )
        check_subject_text(cmd.subject_id)
        self._check_jurisdiction(cmd.subject_jurisdiction)
        check_request_id(cmd.request_id)
        self._check_clock()
        state = await self.offload.run(self.engine.get, spec.name, cmd.key)
        facts = facts_for_delete(spec, state, cmd)
        entry = self._check_placement(spec, facts, cmd.key, Audit.DELETE, cmd.principal)
        supersedes = None if spec.conflict_mode is ConflictMode.LWW else cmd.context
        # The versions deleted may be about other subjects or jurisdictions than the newest, and
        # so held where its tombstone may not go: each such set of facts gets a tombstone of its
        # own first, placed and replicated where those versions went (README: Delete).
        # A request the key remembers is a retry (answered with its first attempt) or a reuse of
        # the id (refused): either way the engine writes nothing, and neither may these.
        remembered = bool(cmd.request_id) and state is not None and state.request(cmd.request_id) is not None
        for other in [] if remembered else _other_deleted_facts(spec, state, cmd, facts):
            try:
                other_entry = self._check_placement(spec, other, cmd.key, Audit.DELETE, cmd.principal)
            except errors.PlacementRefused:
                continue  # not holdable here: the tombstone below deletes it here all the same
            made = await self._commit(
                self._tombstone(spec, cmd.key, supersedes, other), other_entry, cmd.principal
            )
            if supersedes is not None:
                # The last tombstone supersedes this one too, so the key is left with one.
                supersedes = supersedes.add(made.mutation.version.dot)
        tombstone = dataclasses.replace(
            self._tombstone(spec, cmd.key, supersedes, facts),
            request_id=cmd.request_id,
            request_digest=_delete_digest(cmd) if cmd.request_id else b"",
        )
        committed = await self._commit(tombstone, entry, cmd.principal)
        self._count_conflict(spec, committed.conflict and committed.state.has_live())
        return committed

    @staticmethod
    def _tombstone(
        spec: NamespaceSpec, key: str, supersedes: CausalContext | None, facts: RecordFacts
    ) -> LocalWrite:
        return LocalWrite(
            namespace=spec.name,
            key=key,
            tombstone=True,
            supersedes=supersedes,
            subject_id=facts.subject_id,
            subject_jurisdiction=facts.subject_jurisdiction,
            classification=facts.classification,
            siblings_max=spec.siblings_max,
        )

    def _check_schema(self, spec: NamespaceSpec, cmd: PutCommand) -> None:
        """The namespace's quality gate, before anything is audited or written."""
        if spec.json_schema:
            found = quality.violation(spec.json_schema, cmd.value, cmd.content_type)
            if found is not None:
                self.quality.refused(spec.name, found.rule)
                self.metrics.schema_refused.labels(spec.name, found.rule).inc()
                raise errors.InvalidArgument(quality.refusal_message(spec.name, found))

    def _count_quality(self, spec: NamespaceSpec, cmd: PutCommand, committed: Committed) -> None:
        """The quality figures of a value written (not of one a later check refused, nor of a
        retry answered with the first attempt's result)."""
        if committed.replayed or not (spec.json_schema or spec.quality_fields):
            return
        if spec.json_schema:
            self.metrics.schema_validated.labels(spec.name).inc()
        score = quality.completeness(cmd.value, spec.quality_fields) if spec.quality_fields else None
        figures = self.quality.accepted(spec.name, bool(spec.json_schema), score)
        self.metrics.quality_score.labels(spec.name).set(figures.quality_score)

    def _check_jurisdiction(self, code: str) -> None:
        """The code's form, and under a policy pack (which decides by it) that it names a
        country or subdivision ISO 3166 assigns: a code such as UK is the request's fault
        (INVALID_ARGUMENT), not a placement some other region could take."""
        check_jurisdiction(code)
        if code and self.view.topology.cluster.policy_pack_yaml:
            parse_jurisdiction(code)

    def _count_conflict(self, spec: NamespaceSpec, conflict: bool) -> None:
        if conflict:
            self.conflicts_total += 1
            self.metrics.conflicts.labels(spec.name, spec.conflict_mode.name.lower()).inc()

    def _read_decisions(
        self,
        spec: NamespaceSpec,
        key: str,
        versions: tuple[Version, ...],
        principal: str,
        facts: tuple[RecordFacts, ...] | None = None,
    ) -> list[Decision]:
        """Each version's read decision (counted, and audited where the policy says); `facts`:
        the versions' facts when they were built before (a planned hit)."""
        decisions = []
        for f in facts if facts is not None else (_version_facts(spec, v) for v in versions):
            decision, _ = self.enforcer.decide(
                f,
                Action.READ,
                audit_action=Audit.READ,
                principal=principal,
                key=key,
                always_audit=False,
            )
            decisions.append(decision)
        return decisions

    def _open_visible(self, spec: NamespaceSpec, key: str, state: KeyState | None) -> tuple[Version, ...]:
        """The versions a read answers, opened. A version whose data key was destroyed (its
        subject erased) is gone: it is left out. Blocks (key lookups, AES-GCM)."""
        opened = (self.sealer.open_version(spec.name, key, v) for v in visible(state, spec.conflict_mode))
        return tuple(v for v in opened if v is not None)

    def _read_now(
        self, spec: NamespaceSpec, key: str, cached: Hit | Pending | None
    ) -> tuple[KeyState | None, tuple[Version, ...]]:
        if cached is None:
            state = self.engine.get(spec.name, key)
        elif isinstance(cached, Hit):
            state = cached.state
        else:
            state = cached.read(lambda: self.engine.get(spec.name, key))
        return state, self._open_visible(spec, key, state)

    def _hit_plan(self, spec: NamespaceSpec, key: str, hit: Hit) -> HitPlan | None:
        """What a hit answers when its versions open on the event loop (None: they do not),
        kept by the entry's bytes for the next hit of the same ones."""
        entry = hit.entry
        if entry is not None:
            plan = self.hit_plans.get(entry, spec, key)
            if plan is not None:
                return plan
        versions = self._open_on_loop(spec, key, hit.state)
        if versions is None:
            return None
        facts = tuple(_version_facts(spec, v) for v in versions)
        plan = HitPlan(spec, key, versions, answer_bytes(key, hit.state, versions), facts)
        if entry is not None:
            self.hit_plans.keep(entry, plan)
        return plan

    def _open_on_loop(
        self, spec: NamespaceSpec, key: str, state: KeyState | None
    ) -> tuple[Version, ...] | None:
        """The versions a read answers when opening them cannot block: no visible version is
        sealed under a subject's data key (the sealer returns those as they are, with no key
        lookup and no AES-GCM). None when one is: it is opened on an offload thread."""
        shown = visible(state, spec.conflict_mode)
        if any(not v.tombstone and v.subject_id for v in shown):
            return None
        opened = (self.sealer.open_version(spec.name, key, v) for v in shown)
        return tuple(v for v in opened if v is not None)

    def _scan_now(
        self, spec: NamespaceSpec, prefix: str, start_after: str, page_size: int
    ) -> tuple[list[tuple[str, KeyState]], list[tuple[Version, ...]], Exception | None]:
        """A page of rows (and one more, to tell whether there are more) and the opened versions
        of the page's rows, up to the first row that could not be opened, with its error."""
        rows = self.engine.scan(spec.name, prefix, start_after, page_size + 1)
        opened: list[tuple[Version, ...]] = []
        for key, state in rows[:page_size]:
            try:
                opened.append(self._open_visible(spec, key, state))
            except Exception as exc:
                return rows, opened, exc
        return rows, opened, None

    def _read_result(
        self,
        spec: NamespaceSpec,
        key: str,
        state: KeyState | None,
        versions: tuple[Version, ...],
        principal: str,
    ) -> ReadResult | Decision:
        """The answer to a read of the opened `versions`, or the first refusing decision."""
        decisions = self._read_decisions(spec, key, versions, principal)
        refused = next((d for d in decisions if not d.allowed), None)
        if refused is not None:
            return refused
        return self._answer(state, versions, decisions, None)

    def _planned_result(
        self,
        spec: NamespaceSpec,
        key: str,
        state: KeyState | None,
        plan: HitPlan,
        principal: str,
        source: tuple[bytes, ConflictMode] | None,
    ) -> ReadResult | Decision:
        """`_read_result` of a planned hit. The policy decides (counts, and audits where it
        says) every version of every read, as for any read; the answer itself follows from the
        plan (its entry's bytes, hence the state and versions) and the decisions' redactions
        alone, so the one built last for the same plan and the same decisions is used again."""
        decisions = tuple(self._read_decisions(spec, key, plan.versions, principal, plan.facts))
        for decision in decisions:
            if not decision.allowed:
                return decision
        kept = self._planned_answers.get(id(plan))
        # The plan itself is kept in the entry, so its id cannot name another plan meanwhile.
        if kept is not None and kept[0] is plan and kept[1] == decisions:
            return kept[2]
        result = self._answer(state, plan.versions, decisions, source)
        if source is not None:  # a plan that is kept (by its entry's bytes)
            remember(self._planned_answers, id(plan), (plan, decisions, result), PLANS_MAX)
        return result

    @staticmethod
    def _answer(
        state: KeyState | None,
        versions: tuple[Version, ...],
        decisions: Sequence[Decision],
        source: tuple[bytes, ConflictMode] | None,
    ) -> ReadResult:
        context = state.context if state else CausalContext.empty()
        return ReadResult(
            bool(versions),
            tuple(redact(v, d.redacted_fields) for v, d in zip(versions, decisions, strict=True)),
            context,
            tuple(d.redacted_fields for d in decisions),
            source,
        )

    def _too_large(
        self, spec: NamespaceSpec, key: str, versions: tuple[Version, ...], weight: int
    ) -> Exception:
        return errors.FailedPrecondition(
            f"{spec.name}/{key} has {len(versions)} live versions (siblings) weighing {weight} bytes; a "
            f"read answers at most {self.limits.read_record_bytes_max} bytes for one record "
            "(read_record_bytes_max). Resolve the siblings: a Delete without a context supersedes "
            "every version, and a later Put starts afresh"
        )

    def read_ahead(self, namespace: str, key: str) -> ReadAhead | None:
        """Sends the cache lookup of a Get now, before the call is authenticated and authorized,
        so that its Redis round trip overlaps that work; `get(..., ahead)` uses its reply and the
        caller drops it otherwise (ReadAhead.drop). Never raises. Nothing is read from it unless
        `get` runs, which checks the request first; a key longer than any valid key (in
        characters, each at least a byte) is not sent at all."""
        if self.cache is None or not key or len(key) > self.limits.key_bytes_max:
            return None
        return self.cache.read_ahead(namespace, key)

    async def get(
        self, namespace: str, key: str, principal: str = "", ahead: ReadAhead | None = None
    ) -> ReadResult:
        spec = self._namespace(namespace)
        check_key(key, self.limits)
        # The hot path. A cache hit whose versions open without blocking is answered on the event
        # loop; otherwise the read and the opening of its versions share one hop.
        cached = None if self.cache is None else await self.cache.lookup(spec.name, key, ahead)
        source = None
        plan = None
        if isinstance(cached, Hit) and (plan := self._hit_plan(spec, key, cached)) is not None:
            # Opened on the loop: no version is sealed under a subject's key, so the versions
            # follow from the entry and the conflict mode alone (no key that erasure destroys).
            state, versions, weight = cached.state, plan.versions, plan.weight
            if cached.entry is not None:
                source = (cached.entry, spec.conflict_mode)
        else:
            state, versions = await self.offload.run(self._read_now, spec, key, cached)
            weight = answer_bytes(key, state, versions)
        if weight > self.limits.read_record_bytes_max:
            # Refused before any version is judged or audited as read: nothing is served.
            raise self._too_large(spec, key, versions, weight)
        if plan is None:
            result = self._read_result(spec, key, state, versions, principal)
        else:
            result = self._planned_result(spec, key, state, plan, principal, source)
        if isinstance(result, Decision):
            raise errors.PlacementRefused(
                f"region {self.region} may not serve this record: {result.reason}",
                result.allowed_regions,
                result.rule,
            )
        return result

    async def scan(
        self, namespace: str, prefix: str, page_size: int, page_token: str, principal: str = ""
    ) -> ScanPage:
        """A page of live records. Records this region may not serve are left out (each
        refusal is audited and counted); a Get of such a key names the regions that may."""
        spec = self._namespace(namespace)
        if page_size == 0:
            page_size = self.limits.scan_page_size_default
        if page_size > self.limits.scan_page_size_max:
            raise errors.InvalidArgument(
                f"page size {page_size} is too large; use 1 to {self.limits.scan_page_size_max}"
            )
        start_after = decode_page_token(page_token) if page_token else ""
        if start_after and not start_after.startswith(prefix):
            raise errors.InvalidArgument("page token does not belong to this prefix; start without a token")
        rows, opened, error = await self.offload.run(self._scan_now, spec, prefix, start_after, page_size)
        more = len(rows) > page_size
        rows = rows[:page_size]
        items: list[tuple[str, ReadResult]] = []
        # The page stops early at its byte budget; a record heavier than the budget is answered
        # alone, and one heavier than a read may answer fails the page that starts with it.
        page_bytes = 0
        last_key = ""
        for (key, state), versions in zip(rows, opened, strict=False):
            weight = answer_bytes(key, state, versions)
            if last_key and (
                page_bytes + weight > self.limits.scan_page_bytes_max
                or weight > self.limits.read_record_bytes_max
            ):
                return ScanPage(items, encode_page_token(last_key))
            if weight > self.limits.read_record_bytes_max:
                raise self._too_large(spec, key, versions, weight)
            result = self._read_result(spec, key, state, versions, principal)
            if isinstance(result, ReadResult) and result.found:
                items.append((key, result))
                page_bytes += weight
            last_key = key
        if error is not None:
            # The rows before it were judged (and audited) as they were before the failure.
            raise error
        token = encode_page_token(rows[-1][0]) if more and rows else ""
        return ScanPage(items, token)


def facts_for_delete(spec: NamespaceSpec, state: KeyState | None, cmd: DeleteCommand) -> RecordFacts:
    """What a tombstone is about: the newest version it deletes (of those this node holds, live
    or not; with a context in a siblings namespace, the newest the context covers, since the
    others stay), so that the tombstone is placed and replicated wherever that record went;
    the request's subject fields only when the node holds nothing. A tombstone is never looser
    than the namespace."""
    held = sorted(state.versions, key=lambda v: v.hlc, reverse=True) if state else []
    if held and cmd.context is not None and spec.conflict_mode is not ConflictMode.LWW:
        deleted = [v for v in held if cmd.context.covers(v.dot) or _twin_covered(state, v, cmd.context)]
        held = deleted or held
    if held:
        newest = held[0]
        classification = max((newest.classification, spec.classification), key=lambda c: c.strictness)
        return RecordFacts(spec.name, classification, newest.subject_id, newest.subject_jurisdiction)
    return RecordFacts(spec.name, spec.classification, cmd.subject_id, cmd.subject_jurisdiction)


def _other_deleted_facts(
    spec: NamespaceSpec, state: KeyState | None, cmd: DeleteCommand, primary: RecordFacts
) -> list[RecordFacts]:
    """The facts of the live versions a Delete removes (all of them, or those its context covers)
    other than those of its own tombstone, once each, oldest first."""
    if state is None:
        return []
    live = sorted(state.live(), key=lambda v: v.hlc)
    if cmd.context is not None and spec.conflict_mode is not ConflictMode.LWW:
        live = [v for v in live if cmd.context.covers(v.dot) or _twin_covered(state, v, cmd.context)]
    out: list[RecordFacts] = []
    for v in live:
        classification = max((v.classification, spec.classification), key=lambda c: c.strictness)
        facts = RecordFacts(spec.name, classification, v.subject_id, v.subject_jurisdiction)
        if facts != primary and facts not in out:
            out.append(facts)
    return out


def _version_facts(spec: NamespaceSpec, v: Version) -> RecordFacts:
    """What the read policy decides a version's read on."""
    return RecordFacts(spec.name, v.classification, v.subject_id, v.subject_jurisdiction)


def encode_page_token(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode("utf-8", "surrogatepass")).decode("ascii")


def decode_page_token(token: str) -> str:
    try:
        key = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        key = ""
    if not key:
        raise errors.InvalidArgument(
            "invalid page token: pass the next_page_token of the previous page unchanged"
        )
    return key


def _twin_covered(state: KeyState | None, v: Version, context: CausalContext) -> bool:
    """Whether `context` covers a twin of `v`: the version another attempt of the same request
    made, which a context naming either supersedes (domicile.causality, request marks)."""
    if state is None or not v.request_id:
        return False
    mark = state.request(v.request_id)
    return mark is not None and any(context.covers(d) for d in mark.dots)


def _put_digest(cmd: PutCommand) -> bytes:
    return request_digest(
        tombstone=False,
        value=cmd.value,
        content_type=cmd.content_type,
        subject_id=cmd.subject_id,
        subject_jurisdiction=cmd.subject_jurisdiction,
        classification=int(cmd.classification),
    )


def _delete_digest(cmd: DeleteCommand) -> bytes:
    return request_digest(
        tombstone=True,
        value=b"",
        content_type="",
        subject_id=cmd.subject_id,
        subject_jurisdiction=cmd.subject_jurisdiction,
        classification=0,
    )
