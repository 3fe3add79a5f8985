"""The receiving end of replication: re-check the policy (defence in depth), merge
idempotently, persist the source position in the same transaction, measure lag."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from domicile import errors
from domicile.audit import TEXT_CHARS_MAX as AUDIT_TEXT_CHARS
from domicile.audit import AuditEntry
from domicile.causality import CausalContext, Mutation
from domicile.cluster import ClusterSpec
from domicile.hlc import HybridClock, physical_ms, wall_ms
from domicile.model import (
    Limits,
    check_jurisdiction,
    check_key,
    check_namespace_name,
    check_value,
    check_writer_id,
)
from domicile.policy import Action, RecordFacts
from domicile.subjects import LegalHold, hold_covering
from domicile.v1 import record_pb2 as pb
from domicile.wire.records import mutation_from_pb
from node.compliance.enforcer import Audit, Enforcer
from node.crypto.sealing import Sealer
from node.engine.base import GET_MANY_KEYS_MAX, ApplyOutcome, StateTooLarge, StorageEngine
from node.engine.core import DOT_COUNTER_MAX
from node.engine.group_commit import GroupCommitter
from node.metrics import NodeMetrics
from node.offload import Offload
from node.replication import coalesce, late_refusals
from node.replication.stages import Stages
from node.topology_view import TopologyView

log = logging.getLogger("domicile.replication.inbound")


class ErasedSubjects(Protocol):
    """What the receiver needs of node.lifecycle.erasure.Eraser (injected: replication and
    lifecycle do not import each other)."""

    def blocks(
        self, cluster: ClusterSpec, holds: tuple[LegalHold, ...], namespace: str, key: str, subject_id: str
    ) -> str: ...


@dataclass
class InboundStats:
    source_node_id: str
    position: int = 0
    applied_total: int = 0
    refused_total: int = 0
    connected: bool = False
    # The source's streams open now: a reconnect opens the new one before the old one's end
    # is noticed (a half-open connection, found by keepalive), so connected is "any is open".
    streams: int = 0


class Reject:
    """Why the receiver refused a replicated mutation or batch: the `reason` label of
    domicile_replication_rejected_total and, as replication-<reason>, the rule of its audit entry.
    POSITION refuses a whole batch; every other reason refuses one mutation."""

    ORIGIN = "origin"  # the origin or the dot names a node other than the stream's source
    MALFORMED = "malformed"  # a dot counter out of range, a tombstone with a value, a self-superseding dot
    LIMITS = (
        "limits"  # a key, value, content type, subject id, jurisdiction or context a client could not send
    )
    CONTEXT = "context"  # the context names this node's counters beyond what it issued for the key
    CLOCK_DRIFT = "clock_drift"  # the HLC is further ahead of this node's clock than max_clock_drift_ms
    POSITION = "position"  # lsns out of order, or a through_lsn past what the rule allows
    PURGED = "purged"  # a repair offers one of this node's own versions it deleted and purged


@dataclass(frozen=True)
class _Rejected:
    reason: str
    message: str


@dataclass(frozen=True)
class BatchResult:
    through_lsn: int
    refused: int
    duplicates: int


@dataclass(frozen=True)
class RepairResult:
    repaired: tuple[tuple[str, str], ...]  # (namespace, key) whose state changed
    refused: int
    duplicates: int


class Receiver:
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
        eraser: ErasedSubjects,
        clock: HybridClock,
        metrics: NodeMetrics,
        now_ms: Callable[[], int] = wall_ms,
        offload: Offload | None = None,
        limits: Limits | None = None,
        max_clock_drift_ms: int = 5000,
        carry_audit: Callable[[Sequence[tuple[int, AuditEntry]]], None] | None = None,
        carry_room: Callable[[], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.region = region
        self.engine = engine
        self.committer = committer
        self.view = view
        self.enforcer = enforcer
        self.sealer = sealer
        self.eraser = eraser
        self.clock = clock
        self.metrics = metrics
        self.now_ms = now_ms
        self.offload = offload or Offload()
        self.limits = limits or Limits()
        self.max_clock_drift_ms = max_clock_drift_ms
        # Where the engine carries audit entries in its commits: takes the entries a stream's
        # apply carried, on the store's writer thread (node.compliance.audit_log
        # carry_received). Then a batch costs one fsync, and its entries are durable with it.
        # None: the entries are made durable in the audit log before the apply.
        self.carry_audit = carry_audit
        # With carry_audit: asked on the writer thread before an apply that carries entries;
        # blocks while the audit log is behind and raises to refuse the apply (the source sends
        # the batch again), so that its queue of carried entries stays bounded.
        self.carry_room = carry_room
        self.stats: dict[str, InboundStats] = {}
        # Per source: held while its batches are applied and while a stream of it opens.
        self._applying: dict[str, asyncio.Lock] = {}
        self._stages: dict[str, Stages] = {}
        # Told the keys every apply changed (the anti-entropy digest trees mark them).
        self.on_applied: Callable[[list[tuple[str, str]]], None] | None = None

    async def open(self, source_node_id: str) -> int:
        """Starts a stream from a source; returns the position to resume after."""
        # The source's id is written into audit entries and version vectors: a valid writer id
        # only (its node id, with its incarnation epoch after a restore).
        check_writer_id(source_node_id)
        if source_node_id == self.node_id:
            raise errors.InvalidArgument(f"node {self.node_id} cannot replicate to itself")
        stats = self.stats.setdefault(source_node_id, InboundStats(source_node_id))
        stats.streams += 1
        stats.connected = True
        try:
            # After any apply of an older stream of the source still under way (apply_batches).
            async with self._applying.setdefault(source_node_id, asyncio.Lock()):
                stored = await self.offload.run(self.engine.inbound_position, source_node_id)
        except BaseException:
            self.close(source_node_id)  # not opened: the caller closes only what opened
            raise
        # An older stream of the same source may have applied a batch while the read was away:
        # positions only move forward.
        stats.position = max(stats.position, stored)
        return stats.position

    def close(self, source_node_id: str) -> None:
        """Ends one stream `open` opened; the source shows disconnected once none is open."""
        stats = self.stats.get(source_node_id)
        if stats is not None and stats.streams > 0:
            stats.streams -= 1
            stats.connected = stats.streams > 0

    def _check(
        self, source_node_id: str, msg: pb.Mutation, *, own_writes: bool = True
    ) -> Mutation | _Rejected:
        """Decodes a mutation and checks everything that does not need the store: that it is the
        source's own write (a stream carries only those; anti-entropy repairs carry any node's,
        `own_writes` False), the client limits, and its clock. An honest source never sends what
        fails here, so a failure refuses this mutation for good (it is not sent again)."""
        if own_writes and (msg.origin_node_id != source_node_id or msg.version.dot.node_id != source_node_id):
            return _Rejected(
                Reject.ORIGIN,
                f"mutation at lsn {msg.lsn} names origin {msg.origin_node_id!r} and dot node "
                f"{msg.version.dot.node_id!r}; a source sends only its own writes, so both must be "
                f"{source_node_id!r}",
            )
        if not 1 <= msg.version.dot.counter <= DOT_COUNTER_MAX:
            return _Rejected(
                Reject.MALFORMED,
                f"mutation at lsn {msg.lsn} has dot counter {msg.version.dot.counter}; "
                "counters are 1 to 2^62-1",
            )
        try:
            # The client's bound on context entries applies to replicated contexts too.
            m = mutation_from_pb(msg, self.limits)
            check_namespace_name(m.namespace)
            check_key(m.key, self.limits)
            check_value(m.version.value, self.limits)
            if len(m.version.content_type.encode()) > self.limits.content_type_bytes_max:
                raise errors.InvalidArgument(
                    f"content type is longer than {self.limits.content_type_bytes_max} bytes"
                )
            if len(m.version.subject_id.encode()) > self.limits.subject_id_bytes_max:
                raise errors.InvalidArgument(
                    f"subject id is longer than {self.limits.subject_id_bytes_max} bytes"
                )
            check_jurisdiction(m.version.subject_jurisdiction)
        except errors.InvalidArgument as exc:
            return _Rejected(Reject.LIMITS, f"mutation at lsn {msg.lsn}: {exc.message}")
        except UnicodeError:
            return _Rejected(Reject.LIMITS, f"mutation at lsn {msg.lsn} carries text that is not valid UTF-8")
        if m.version.tombstone and m.version.value:
            return _Rejected(Reject.MALFORMED, f"mutation at lsn {msg.lsn} is a tombstone with a value")
        if m.context.covers(m.version.dot):
            return _Rejected(
                Reject.MALFORMED,
                f"mutation at lsn {msg.lsn} supersedes its own dot "
                f"{m.version.dot.node_id}:{m.version.dot.counter}",
            )
        # A timestamp from the future would win every lww conflict until the clocks catch up, and
        # one past 2^63 cannot even be stored (the HLC is observed into every later audit entry).
        ahead_ms = physical_ms(m.version.hlc) - self.now_ms()
        if ahead_ms > self.max_clock_drift_ms:
            return _Rejected(
                Reject.CLOCK_DRIFT,
                f"mutation at lsn {msg.lsn} has an HLC {ahead_ms} ms ahead of this node's clock; at most "
                f"{self.max_clock_drift_ms} ms is allowed (max_clock_drift_ms)",
            )
        return m

    def _issued(
        self, wanted: Sequence[tuple[str, str]]
    ) -> tuple[list[str], dict[tuple[str, str], CausalContext]]:
        """The writers of this store (this node first) and each (namespace, key)'s context as
        stored: the counters each writer has issued for the key. Blocks."""
        writers = self.engine.writers()
        by_namespace: dict[str, list[str]] = {}
        for namespace, key in wanted:
            by_namespace.setdefault(namespace, []).append(key)
        issued: dict[tuple[str, str], CausalContext] = {}
        for namespace, keys in by_namespace.items():
            for i in range(0, len(keys), GET_MANY_KEYS_MAX):
                states = self.engine.get_many(namespace, keys[i : i + GET_MANY_KEYS_MAX])
                for key in keys[i : i + GET_MANY_KEYS_MAX]:
                    state = states.get(key)
                    issued[(namespace, key)] = state.context if state else CausalContext.empty()
        return writers, issued

    def _may_write_here(self, name: str) -> bool:
        """Whether a context's node may be a writer of this store: this node, or a node of its
        region (over a shared MongoDB database the region's daemons write the same key states),
        in any incarnation of it."""
        if name == self.engine.node_id:
            return True
        node_id = name.partition(".")[0]
        node = self.view.topology.node(node_id)
        return node is not None and node.region == self.region

    async def _check_contexts(self, mutations: list[Mutation], slack: int = 0) -> dict[int, _Rejected]:
        """Mutations whose context names a writer of this store (this node, or another daemon of
        the region over a shared database) with counters beyond what that writer has issued for
        the key: applied, they would make that writer's next dot for the key overflow (and the
        key refuse every write of it). Counters only grow, so a read before the apply is safe.
        `slack`: how far past what it issued a repair may name a writer's counters (a node
        restored from an old copy gets back its own later writes from its peers), still far
        below the counter limit. A repaired version's own dot counts as naming too."""
        # A writer's dots are its writer id's (its node id, with its epoch after a restore); an
        # older incarnation's counters are another writer's, which this store cannot vouch for.

        def named(m: Mutation) -> set[str]:
            names = {n for n in m.context.vv if self._may_write_here(n)}
            names.update(d.node_id for d in m.context.dots if self._may_write_here(d.node_id))
            if slack and self._may_write_here(m.version.dot.node_id):
                names.add(m.version.dot.node_id)
            return names

        naming = {i: found for i, m in enumerate(mutations) if (found := named(m))}
        if not naming:
            return {}
        writers, issued = await self.offload.run(
            self._issued, [(mutations[i].namespace, mutations[i].key) for i in naming]
        )
        refused: dict[int, _Rejected] = {}
        # Each node's current incarnation only: an older one's counters are another writer's,
        # whose later writes the store may have lost (a restore) and a peer may still name.
        current = _current_incarnations(writers, self.engine.node_id)
        for i, names in naming.items():
            m = mutations[i]
            stored = issued[(m.namespace, m.key)]
            for writer in sorted(names.intersection(current)):
                own = m.version.dot.counter if slack and m.version.dot.node_id == writer else 0
                claimed = max(m.context.max_counter(writer), own)
                allowed = stored.max_counter(writer) + slack
                if claimed > allowed:
                    whose = "this node" if writer == self.engine.node_id else "a writer of this store"
                    refused[i] = _Rejected(
                        Reject.CONTEXT,
                        f"mutation at lsn {m.lsn} has a context naming counter {claimed} of {whose} "
                        f"{writer!r} for the key; it has issued up to {allowed}",
                    )
                    break
        return refused

    async def _purged_own(self, mutations: list[Mutation], skip: Collection[int]) -> dict[int, _Rejected]:
        """Versions of this node's own writes, older than its tombstone purge point, that its
        store does not cover: this node made each of them and applied it first, so it holds one
        it does not cover only because it deleted the record and then purged the tombstone.
        A peer may still hold such a version (a replica back from an old copy of its store,
        before its bootstrap prunes it); pulled back, it would bring the deleted record back
        here and, from here, everywhere. A legal hold keeps what it covers."""
        writer = self.engine.node_id
        candidates = [i for i, m in enumerate(mutations) if i not in skip and m.version.dot.node_id == writer]
        if not candidates:
            return {}

        def read() -> tuple[int, dict[tuple[str, str], CausalContext]]:
            purged_before = self.engine.purged_before()
            _, contexts = self._issued([(mutations[i].namespace, mutations[i].key) for i in candidates])
            return purged_before, contexts

        purged_before, contexts = await self.offload.run(read)
        holds = self.view.topology.holds
        refused: dict[int, _Rejected] = {}
        for i in candidates:
            m = mutations[i]
            v = m.version
            if v.hlc >= purged_before or contexts[(m.namespace, m.key)].covers(v.dot):
                continue
            if hold_covering(holds, m.namespace, m.key, v.subject_id) is not None:
                continue
            refused[i] = _Rejected(
                Reject.PURGED,
                f"version {v.dot.node_id}:{v.dot.counter} of {m.namespace}/{m.key} is one of this node's "
                "own, older than its tombstone purge point, and no longer held here: it was deleted",
            )
        return refused

    def _reject(
        self,
        source_node_id: str,
        reason: str,
        message: str,
        entries: list[asyncio.Future[int]],
        *,
        namespace: str = "",
        key: str = "",
        lsn: int = 0,
    ) -> None:
        """Counts, logs and audits (as the source node) one refusal of the receiver's checks."""
        self.metrics.replication_rejected.labels(source_node_id, self.node_id, reason).inc()
        log.warning("refused replication from %s (%s): %s", source_node_id, reason, message)
        entries.append(
            self.enforcer.audit.record(
                principal=f"node:{source_node_id}",
                action=Audit.REPLICATE_RECEIVE,
                namespace=namespace[:AUDIT_TEXT_CHARS],
                key=key[:AUDIT_TEXT_CHARS],
                decision="refuse",
                rule=f"replication-{reason}",
                policy_version=self.enforcer.policy_version,
                detail=f"from={source_node_id} lsn={lsn} {message}"[:AUDIT_TEXT_CHARS],
            )
        )

    def _admit(
        self,
        source_node_id: str,
        m: Mutation,
        entries: list[asyncio.Future[int]],
        *,
        repair: str = "",
        carried: list[AuditEntry] | None = None,
    ) -> bool:
        """Whether the policy and the erasures let this mutation be applied here, audited: a
        refusal's entry goes to `entries` (to await); an allowed one's too, or, with `carried`,
        to it, unrecorded, for the apply's commit to carry."""
        facts = RecordFacts(
            m.namespace, m.version.classification, m.version.subject_id, m.version.subject_jurisdiction
        )
        principal = f"node:{source_node_id}"
        if repair:
            dot = m.version.dot
            detail = f"from={source_node_id} {repair} dot={dot.node_id}:{dot.counter}"
        else:
            detail = f"from={source_node_id} lsn={m.lsn}"
        if self.view.topology.cluster.find_namespace(m.namespace) is None:
            log.warning("refused mutation from %s for unknown namespace %r", source_node_id, m.namespace)
            entries.append(
                self.enforcer.refusal(
                    facts,
                    action=Action.REPLICATE,
                    audit_action=Audit.REPLICATE_RECEIVE,
                    principal=principal,
                    key=m.key,
                    rule="namespace-unknown",
                    detail=detail,
                )
            )
            return False
        # An erased subject is refused before any decision is recorded for it.
        if not m.version.tombstone:
            topology = self.view.topology
            erased_by = self.eraser.blocks(
                topology.cluster, topology.holds, m.namespace, m.key, m.version.subject_id
            )
            if erased_by:
                # Written where the erasure had not arrived yet: it must not bring the subject back.
                entries.append(
                    self.enforcer.refusal(
                        facts,
                        action=Action.REPLICATE,
                        audit_action=Audit.REPLICATE_RECEIVE,
                        principal=principal,
                        key=m.key,
                        rule="subject-erased",
                        detail=f"{detail} request={erased_by}",
                    )
                )
                log.info(
                    "refused %s/%s from %s: subject erased by %s",
                    m.namespace,
                    m.key,
                    source_node_id,
                    erased_by,
                )
                return False
        if carried is not None:
            decision, made = self.enforcer.decide_carried(
                facts,
                Action.REPLICATE,
                audit_action=Audit.REPLICATE_RECEIVE,
                principal=principal,
                key=m.key,
                detail=detail,
            )
            if isinstance(made, AuditEntry):
                carried.append(made)
            else:
                entries.append(made)
        else:
            decision, entry = self.enforcer.decide(
                facts,
                Action.REPLICATE,
                audit_action=Audit.REPLICATE_RECEIVE,
                principal=principal,
                key=m.key,
                detail=detail,
            )
            if entry is not None:
                entries.append(entry)
        if not decision.allowed:
            # A correct source never sends this: it is a misconfigured or rogue node.
            log.warning(
                "refused replicated record %s/%s from %s: %s (rule %s)",
                m.namespace,
                m.key,
                source_node_id,
                decision.reason,
                decision.rule,
            )
            return False
        # Checked here, before sealing replaces the checksum with the stored value's (the engine
        # could no longer tell a value damaged on the way).
        if not m.version.tombstone and not m.version.checksum_ok():
            raise errors.DataCorruption(
                f"mutation {m.namespace}/{m.key} at lsn {m.lsn} from {source_node_id} failed its sha256 "
                "checksum; the batch was not applied"
            )
        return True

    def _check_positions(self, position: int, messages: Sequence[pb.Mutation], through_lsn: int) -> str:
        """What is wrong with a batch's positions (empty when nothing). The rule: mutation lsns
        increase, none is past through_lsn, and through_lsn is at most
        replication_position_gap_max past this target's position for the source. A batch can
        legitimately end past its last mutation (the source skipped entries this target may not
        hold), but a source reads at most replication_batch_records_max consecutive log entries
        per batch after the position it resumed from, and its log positions have no holes, so an
        honest batch never moves the position further than that."""
        previous = 0
        for msg in messages:
            if msg.lsn <= previous:
                return (
                    f"mutation lsn {msg.lsn} follows lsn {previous}; lsns in a batch start at 1 and increase"
                )
            if msg.lsn > through_lsn:
                return f"mutation lsn {msg.lsn} is past the batch's through_lsn {through_lsn}"
            previous = msg.lsn
        gap_max = self.limits.replication_position_gap_max
        if through_lsn - position > gap_max:
            return (
                f"through_lsn {through_lsn} is {through_lsn - position} past this target's position "
                f"{position} for the source; a batch may move it at most {gap_max} "
                "(replication_position_gap_max)"
            )
        return ""

    async def apply_batch(
        self, source_node_id: str, messages: Sequence[pb.Mutation], through_lsn: int
    ) -> BatchResult:
        """Applies a batch and returns the position to acknowledge. A batch whose positions break
        the rule of _check_positions is refused whole: nothing of it is applied and the position
        stays. A mutation that fails the other checks is refused alone and the rest applies."""
        stats = self.stats.setdefault(source_node_id, InboundStats(source_node_id))
        if through_lsn <= stats.position:
            # A batch from before our position (a duplicate after reconnect): nothing to do but
            # count its records, as the ack does.
            if messages:
                labels = (source_node_id, self.node_id)
                self.metrics.replication_duplicates.labels(*labels).inc(len(messages))
            return BatchResult(stats.position, 0, len(messages))
        entries: list[asyncio.Future[int]] = []
        problem = self._check_positions(stats.position, messages, through_lsn)
        if problem:
            self._reject(source_node_id, Reject.POSITION, problem, entries, lsn=through_lsn)
            stats.refused_total += len(messages)
            await asyncio.gather(*entries)
            return BatchResult(stats.position, len(messages), 0)
        return await self._apply_positioned(source_node_id, messages, through_lsn)

    async def apply_batches(
        self, source_node_id: str, batches: Sequence[tuple[Sequence[pb.Mutation], int]]
    ) -> BatchResult:
        """_apply_batches, run to its end once begun, one at a time per source. A stream cut while
        its batches are applied (the source gave up waiting for the ack) cannot call the commit
        back: the apply finishes, so what it audited and committed is also counted, and a stream
        the source reopens meanwhile starts from the position it leaves, not below it (which
        would apply and audit those records a second time)."""
        return await asyncio.shield(self._apply_batches_in_turn(source_node_id, batches))

    async def _apply_batches_in_turn(
        self, source_node_id: str, batches: Sequence[tuple[Sequence[pb.Mutation], int]]
    ) -> BatchResult:
        async with self._applying.setdefault(source_node_id, asyncio.Lock()):
            return await self._apply_batches(source_node_id, batches)

    async def _apply_batches(
        self, source_node_id: str, batches: Sequence[tuple[Sequence[pb.Mutation], int]]
    ) -> BatchResult:
        """Applies consecutive batches of a stream as apply_batch would one after another, but
        each run of them that follows on cleanly in one commit (node.replication.coalesce);
        returns the position reached and the counts of them all."""
        stats = self.stats.setdefault(source_node_id, InboundStats(source_node_id))
        refused = duplicates = 0
        start = 0
        while start < len(batches):
            # From the position as it is now: each run starts where the one before left it.
            run = coalesce.next_run(stats.position, batches, start, self._check_positions)
            if run.merged is None:
                result = await self.apply_batch(source_node_id, *batches[run.start])
            else:
                result = await self._apply_positioned(source_node_id, *run.merged)
            refused += result.refused
            duplicates += result.duplicates
            start = run.end
        return BatchResult(stats.position, refused, duplicates)

    async def _apply_positioned(
        self, source_node_id: str, messages: Sequence[pb.Mutation], through_lsn: int
    ) -> BatchResult:
        """apply_batch past its position checks: `messages` passed them (as one batch or as a run
        of batches, each after the one before) and through_lsn is past the position."""
        stats = self.stats.setdefault(source_node_id, InboundStats(source_node_id))
        stages = self._stages_of(source_node_id)
        timer = stages.timer()
        if messages:
            stages.since_commit("arrive", messages[0].version.hlc, self.now_ms)
        entries: list[asyncio.Future[int]] = []
        labels = (source_node_id, self.node_id)
        checked: list[Mutation] = []
        for msg in messages:
            result = self._check(source_node_id, msg)
            if isinstance(result, _Rejected):
                self._reject(
                    source_node_id,
                    result.reason,
                    result.message,
                    entries,
                    namespace=msg.namespace,
                    key=msg.key,
                    lsn=msg.lsn,
                )
            else:
                checked.append(result)
        bad_contexts = await self._check_contexts(checked)
        for i, rejected in bad_contexts.items():
            m = checked[i]
            self._reject(
                source_node_id,
                rejected.reason,
                rejected.message,
                entries,
                namespace=m.namespace,
                key=m.key,
                lsn=m.lsn,
            )
        mutations = [m for i, m in enumerate(checked) if i not in bad_contexts]
        timer.mark("check")
        cluster = self.view.topology.cluster
        carried: list[AuditEntry] | None = [] if self.carry_audit is not None else None
        # Stored encrypted under this region's key for the subject; data keys never travel. The
        # whole batch is sealed in one hop, after every mutation was admitted.
        admitted = await self.sealer.seal_mutations(
            cluster, [m for m in mutations if self._admit(source_node_id, m, entries, carried=carried)]
        )
        refused = len(messages) - len(admitted)
        # domicile_replication_refused_total counts the policy's refusals; the checks above
        # count theirs in domicile_replication_rejected_total.
        policy_refused = len(mutations) - len(admitted)
        timer.mark("seal")
        # The batch's audit entries are durable before it is applied (and acknowledged): those
        # recorded (refusals; every entry where the engine does not carry them) here, the
        # carried ones in the apply's own commit.
        if entries:
            await asyncio.gather(*entries)
        timer.mark("audit")

        late: list[late_refusals.LateRefusal] = []

        def work(engine: StorageEngine) -> ApplyOutcome:
            if carried and self.carry_room is not None:
                self.carry_room()
            # Again on the writer thread: an erasure that ran while the batch was sealed and
            # audited has read the subject's keys already, and would miss what is applied now.
            still, refused_now = late_refusals.recheck(self.eraser.blocks, self.view.topology, admitted)
            while True:
                audit = carried or ()
                if refused_now and carried is not None:
                    audit = late_refusals.carried_with_refusals(
                        self.enforcer, source_node_id, admitted, carried, refused_now
                    )
                try:
                    outcome = engine.apply_remote(source_node_id, still, through_lsn, audit)
                    break
                except StateTooLarge as error:
                    # A state the engine can never store: refused alone, audited, and the rest
                    # of the batch applied; failing the batch would send it again for ever.
                    still, refused = late_refusals.too_large(still, error.namespace, error.key, error.message)
                    if not refused:
                        raise
                    log.warning(
                        "refused %d replicated records from %s: %s",
                        len(refused),
                        source_node_id,
                        error.message,
                    )
                    refused_now = [*refused_now, *refused]
            late.extend(refused_now)
            if outcome.received and self.carry_audit is not None:
                try:
                    self.carry_audit(outcome.received)
                except Exception:
                    # The apply is durable with its entries in the store: the audit log appends
                    # them at its next start.
                    log.exception("the audit log could not take the entries of a replicated apply")
            return outcome

        outcome = await self.committer.run(work, touches=_keys_of(admitted))
        timer.mark("commit")
        if late:
            # The refused records' entries, durable before the batch is acknowledged.
            if carried is None:
                await asyncio.gather(*late_refusals.record_refusals(self.enforcer, source_node_id, late))
            else:
                late_refusals.count_carried(self.enforcer, late)
        refused += len(late)
        policy_refused += len(late)
        if admitted:
            # Bounded by the drift check: a remote clock cannot carry this one past it.
            self.clock.observe(max(m.version.hlc for m in admitted))
        if self.on_applied is not None and outcome.applied:
            self.on_applied([(m.namespace, m.key) for m in outcome.applied])
        now = self.now_ms()
        lags_ms = [max(0, now - physical_ms(m.version.hlc)) for m in outcome.applied]
        histogram = self.metrics.replication_lag.labels(*labels)
        for lag in lags_ms:
            histogram.observe(lag / 1000.0)
        self.metrics.lag_window(*labels).add_many(float(x) for x in lags_ms)
        self.metrics.replication_applied.labels(*labels).inc(len(outcome.applied))
        self.metrics.replication_duplicates.labels(*labels).inc(outcome.duplicates)
        if policy_refused:
            self.metrics.replication_refused.labels(*labels).inc(policy_refused)
        if outcome.conflicts:
            self.metrics.conflicts.labels("*", "replicated").inc(outcome.conflicts)
        self._count_over_cap(outcome)
        stats.position = outcome.position
        stats.applied_total += len(outcome.applied)
        stats.refused_total += refused
        return BatchResult(outcome.position, refused, outcome.duplicates)

    def _count_over_cap(self, outcome: ApplyOutcome) -> None:
        # The sibling cap refuses client writes only. A peer's write is concurrent with what is
        # here, and was acknowledged to its client: refusing it would lose it. It is kept, and
        # counted, and the next client write with the key's context resolves the siblings.
        cluster = self.view.topology.cluster
        for m, versions in zip(outcome.applied, outcome.versions_after, strict=False):
            spec = cluster.find_namespace(m.namespace)
            if spec is not None and versions > spec.siblings_max:
                self.metrics.siblings_over_cap.labels(m.namespace).inc()

    def _stages_of(self, source_node_id: str) -> Stages:
        stages = self._stages.get(source_node_id)
        if stages is None:
            stages = self._stages[source_node_id] = Stages(self.metrics, source_node_id, self.node_id)
        return stages

    def stats_for(self, source_node_id: str) -> InboundStats:
        return self.stats.setdefault(source_node_id, InboundStats(source_node_id))

    async def apply_repair(
        self, peer_node_id: str, messages: Sequence[pb.Mutation], *, via: str = "antientropy"
    ) -> RepairResult:
        """Merges key states a peer sent for anti-entropy (one mutation per version, any node's
        writes) with every check of a stream but the origin and the positions: the client limits,
        the clock, this node's own counters (within replication_position_gap_max of what it
        issued), the erasure block and the policy, each refusal counted and audited. Admitted
        values are sealed, their audit entries made durable, then merged by the same apply as a
        stream (no source position moves), the erasure block checked again at its commit."""
        entries: list[asyncio.Future[int]] = []
        checked: list[Mutation] = []
        for msg in messages:
            result = self._check(peer_node_id, msg, own_writes=False)
            if isinstance(result, _Rejected):
                self._reject(
                    peer_node_id, result.reason, result.message, entries, namespace=msg.namespace, key=msg.key
                )
            else:
                checked.append(result)
        bad = await self._check_contexts(checked, slack=self.limits.replication_position_gap_max)
        if via == "antientropy":
            bad.update(await self._purged_own(checked, skip=bad))
        for i, rejected in bad.items():
            m = checked[i]
            self._reject(
                peer_node_id, rejected.reason, rejected.message, entries, namespace=m.namespace, key=m.key
            )
        mutations = [m for i, m in enumerate(checked) if i not in bad]
        admitted = await self.sealer.seal_mutations(
            self.view.topology.cluster,
            [m for m in mutations if self._admit(peer_node_id, m, entries, repair=via)],
        )
        if entries:
            await asyncio.gather(*entries)
        policy_refused = len(mutations) - len(admitted)
        if policy_refused:
            self.metrics.replication_refused.labels(peer_node_id, self.node_id).inc(policy_refused)
        if not admitted:
            return RepairResult((), len(messages), 0)

        late: list[late_refusals.LateRefusal] = []

        def work(engine: StorageEngine) -> ApplyOutcome:
            # Again on the writer thread, as for a stream: an erasure that ran while the repair
            # was sealed and audited has read the subject's keys already.
            still, refused_now = late_refusals.recheck(
                self.eraser.blocks, self.view.topology, admitted, via=via
            )
            late.extend(refused_now)
            while True:
                try:
                    return engine.apply_remote(peer_node_id, still, 0)
                except StateTooLarge as error:
                    # As for a stream: refused alone, or every round (and a bootstrap part)
                    # would fail on it for ever.
                    still, refused = late_refusals.too_large(
                        still, error.namespace, error.key, error.message, via=via
                    )
                    if not refused:
                        raise
                    log.warning("refused %d records from %s: %s", len(refused), peer_node_id, error.message)
                    late.extend(refused)

        async def commit_and_audit() -> tuple[ApplyOutcome, tuple[tuple[str, str], ...]]:
            outcome = await self.committer.run(work, touches=_keys_of(admitted))
            # Told here, with the commit: a caller cancelled meanwhile (a backfill restarted, a
            # repair call's deadline) must not leave the digest trees without keys it changed,
            # since no later apply of the same states changes them again.
            self.clock.observe(max(m.version.hlc for m in admitted))
            keys = tuple(dict.fromkeys((m.namespace, m.key) for m in outcome.applied))
            if self.on_applied is not None and keys:
                self.on_applied(list(keys))
            if outcome.conflicts:
                self.metrics.conflicts.labels("*", "repaired").inc(outcome.conflicts)
            if late:
                # Their allow entries were durable before the apply: the refusals follow them,
                # durable before the repair is reported.
                await asyncio.gather(*late_refusals.record_refusals(self.enforcer, peer_node_id, late))
                self.metrics.replication_refused.labels(peer_node_id, self.node_id).inc(len(late))
            return outcome, keys

        # Shielded, as a streamed apply is: a round cut short does not leave a refusal unaudited
        # nor a change untold.
        outcome, keys = await asyncio.shield(commit_and_audit())
        return RepairResult(keys, len(messages) - len(admitted) + len(late), outcome.duplicates)


def _current_incarnations(writers: Sequence[str], own: str) -> set[str]:
    """Of the store's writer ids ("<node id>" or "<node id>.<epoch>"), each node's newest, and
    this node's own as it writes now."""
    newest: dict[str, tuple[int, str]] = {}
    for writer in writers:
        node_id, _, epoch = writer.partition(".")
        rank = int(epoch) if epoch.isdigit() else 0
        if node_id not in newest or rank > newest[node_id][0]:
            newest[node_id] = (rank, writer)
    newest[own.partition(".")[0]] = (0, own)
    return {writer for _, writer in newest.values()}


def _keys_of(mutations: Sequence[Mutation]) -> list[tuple[str, str]]:
    """The keys an apply of these mutations may change, once each (the read cache keeps them
    out of its answers while the apply commits)."""
    return list(dict.fromkeys((m.namespace, m.key) for m in mutations))
