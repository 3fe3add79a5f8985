"""Carries out erasure orders in this region, and keeps erased subjects out afterwards.

An order arrives with the subject orders (WatchSubjectOrders; the coordinator keeps it until
every region reports).
For each key that holds the subject's data, the node either keeps it, because a legal hold
covers it or its retention class is a legal obligation (GDPR Art. 17(3)(b)), or writes a
tombstone that supersedes every version the node holds; a key whose record of the subject is
already tombstoned (another region's erasure arrived by replication first) counts as erased
too, so every region's receipt counts what the region no longer holds. It then destroys the
subject's data keys of every class that kept nothing, so every copy sealed under them (old
database files, backups) is unreadable, writes a receipt to the audit trail, and reports to
the coordinator.

The subject is blocked before anything is erased, and the block persists: later writes about
the subject are refused, and a replicated record of the subject that a partitioned region
wrote before it heard of the erasure is refused on arrival, so an erased record cannot come
back when the partition heals. Tombstones are always accepted. The block stores a keyed hash of
the subject id, not the id.

Every step is idempotent, so an interrupted erasure simply runs again; a finished one is
remembered (its receipt) until the coordinator has it, then forgotten (the audit trail keeps it).

A legal hold only defers an erasure (GDPR Art. 17(3)(e)): when it is released, the node erases
what it kept of every subject erased before, unless another hold or a legal obligation still
keeps it, and destroys the subject's keys of every class that then keeps nothing
(carry_out_release). The release is noted in the store first, so a restart finishes it. What
it erased is reported to the coordinator as a receipt of the subject's erasure request naming the
released hold, kept in the store until the coordinator has it, like the erasure's own receipt.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from domicile.audit import subject_hash
from domicile.causality import CausalContext, KeyState, Version
from domicile.cluster import ClusterSpec
from domicile.errors import DomicileError, FailedPrecondition, Unavailable
from domicile.hlc import wall_ms
from domicile.subjects import (
    RECEIPT_KEPT_MAX,
    ErasureOrder,
    KeptRecord,
    LegalHold,
    RegionReceipt,
    hold_covering,
)
from domicile.wire.records import key_state_from_bytes
from node.compliance.enforcer import AuditSink
from node.crypto.keyring import Keyring
from node.crypto.sealing import key_class, sealed_key_class
from node.engine.base import LocalWrite, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.lifecycle.erased_list_store import load_erased_list, store_erased_list
from node.lifecycle.released_holds import (
    RELEASES_META,
    PendingRelease,
    erased_subjects_held_by,
    releases_from_bytes,
    releases_to_bytes,
)
from node.offload import Offload

log = logging.getLogger("domicile.erasure")

RECEIPTS_META = "erasure_receipts"
# Receipts of erasures at a hold's release not yet reported: "request_id hold_id" -> receipt.
RELEASE_RECEIPTS_META = "erasure_release_receipts"
ERASE_ACTION = "erase"
RECEIPT_ACTION = "erasure_receipt"
# Key states read per get_many while collecting a subject's keys.
STATES_PER_READ = 500


def keep_reason(
    cluster: ClusterSpec, holds: tuple[LegalHold, ...], namespace: str, key: str, subject_id: str
) -> str:
    """Why a record of the subject must be kept despite an erasure, or "" when it may go."""
    hold = hold_covering(holds, namespace, key, subject_id)
    if hold is not None:
        return hold.describe()
    spec = cluster.find_namespace(namespace)
    retention = cluster.retention_class(spec.retention_class) if spec else None
    if retention is not None and retention.legal_obligation:
        years = retention.period_s / (365 * 86_400)
        return (
            f"retention class {retention.name} ({years:g} years) is a legal obligation: "
            f"{retention.basis or 'kept by law'} (GDPR Art. 17(3)(b))"
        )
    return ""


class ErasedInFlight(FailedPrecondition):
    """A local write the writer refused at commit: its subject was erased after the write's
    decision was made (Eraser.refusal). Its caller audits the refusal (the write's allow entry
    was made already)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"this data subject was erased by request {request_id} while this write was in flight; "
            "records about them are not accepted any more (a new relationship needs a new subject id)"
        )
        self.request_id = request_id


class Eraser:
    def __init__(
        self,
        *,
        region: str,
        node_id: str,
        engine: StorageEngine,
        committer: GroupCommitter,
        keyring: Keyring,
        audit: AuditSink,
        subject_key: bytes,
        report: Callable[[str, RegionReceipt], Awaitable[None]],
        on_committed: Callable[[], None] = lambda: None,
        now_ms: Callable[[], int] = wall_ms,
        offload: Offload | None = None,
    ) -> None:
        self.on_committed = on_committed
        self.region = region
        self.node_id = node_id
        self.engine = engine
        self.committer = committer
        self.keyring = keyring
        self.audit = audit
        self.subject_key = subject_key
        self.report = report
        self.now_ms = now_ms
        self.offload = offload or Offload()
        # Filled by load(), before the node serves. `blocked` refuses the subjects from the
        # moment an erasure marks them; `_stored_blocks` holds the marks known to be durable,
        # so that a retry after a failed store stores its block instead of trusting the mark.
        self.blocked: dict[str, str] = {}
        self._stored_blocks: dict[str, str] = {}
        self.receipts: dict[str, RegionReceipt] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._refreshing: set[asyncio.Task[None]] = set()
        self.completed_total = 0
        # The coordinator's permanent list: subject hash (under erased_key) -> request id.
        self.erased_key = b""
        self.erased_list: dict[str, str] = {}
        # Listed subjects whose sweep has not finished: refused like the rest of the list, but
        # not stored with it, so that a sweep that fails (or a crash) leaves them to the next.
        self._unswept: dict[str, str] = {}
        self._sweeping = asyncio.Lock()
        # Writes the writer refused because an erasure overtook them (see refusal()).
        self.refused_in_writer = 0
        # A restored store that has not yet received the permanent list (see load()).
        self.awaiting_list = False
        # Released holds whose kept records are still to be erased here (carry_out_release).
        self.releases: dict[str, PendingRelease] = {}
        self._releasing: dict[str, asyncio.Task[None]] = {}
        # The erasure passes under way: a release waits for those that began before it, since
        # they act on the holds of then and may keep a record under the hold just released.
        self._passes: set[asyncio.Future[None]] = set()
        self.release_erased_total = 0
        # Receipts of erasures at a release the coordinator does not have yet, by
        # release_receipt_key(), and the reports under way.
        self.release_receipts: dict[str, tuple[str, RegionReceipt]] = {}
        self._reporting: dict[str, asyncio.Task[None]] = {}
        # The holds of the last apply(): a release reads them at each subject, so a hold placed
        # while it runs keeps what it covers.
        self._holds: tuple[LegalHold, ...] = ()

    async def load(self, restored: bool = False) -> None:
        """Reads the erased subjects and the receipts not yet reported from the store. A
        `restored` store (a new incarnation) that holds no permanent list yet may hold, and be
        sent writes about, subjects erased after its backup point: until the coordinator's list
        has arrived, writes about any data subject are refused (waiting_refusal)."""
        blocked, receipts, erased, releases, release_receipts = await self.offload.run(
            lambda: (
                self.engine.blocked_subjects(),
                self.engine.get_meta(RECEIPTS_META),
                load_erased_list(self.engine),
                self.engine.get_meta(RELEASES_META),
                self.engine.get_meta(RELEASE_RECEIPTS_META),
            )
        )
        self.releases = releases_from_bytes(releases)
        self.release_receipts = {
            key: (str(row["request"]), _receipt_from_json(row["receipt"]))
            for key, row in json.loads(release_receipts or b"{}").items()
        }
        if erased:
            self.erased_key, self.erased_list = erased
        self.blocked = blocked
        self._stored_blocks = dict(blocked)
        self.receipts = {rid: _receipt_from_json(r) for rid, r in json.loads(receipts or b"{}").items()}
        self.awaiting_list = restored and not erased
        if self.awaiting_list:
            log.warning(
                "restored store without the cluster's list of erased subjects: writes about data "
                "subjects are refused until the coordinator has sent it"
            )

    def waiting_refusal(self, subject_id: str) -> DomicileError | None:
        """Why a write about `subject_id` is refused while a restored store waits for the list."""
        if not self.awaiting_list or not subject_id:
            return None
        return Unavailable(
            "this node was restored from a backup and has not yet received the cluster's list of "
            "erased subjects from the coordinator; writes about a data subject are refused until it "
            "has (retry later; writes without a subject id are accepted)"
        )

    # -- the block --------------------------------------------------------------------------

    def erased_by(self, subject_id: str) -> str:
        """The erasure request that erased this subject here, or anywhere in the cluster
        (the coordinator's permanent list), or ""."""
        if not subject_id:
            return ""
        if self.erased_list:
            found = self.erased_list.get(subject_hash(self.erased_key, subject_id))
            if found:
                return found
        if not self.blocked:
            return ""
        return self.blocked.get(subject_hash(self.subject_key, subject_id), "")

    # -- the permanent list: erasures win over backups -----------------------------------------

    def adopt_erased(
        self, key: bytes, erased: list[tuple[str, str]], cluster: ClusterSpec, holds: tuple[LegalHold, ...]
    ) -> None:
        """Adopts the coordinator's permanent erasure list (at every registration). A subject not
        seen on it before is refused from now on, and a sweep tombstones what the store still
        holds of it: a store restored from before the erasure must not bring it back."""
        if key != self.erased_key:
            self.erased_key, self.erased_list, self._unswept = key, {}, {}
        new = {digest: rid for digest, rid in erased if digest not in self.erased_list}
        self.erased_list.update(new)
        self._unswept.update(new)
        # The list is in memory: erased_by refuses its subjects from now on, whatever becomes
        # of their sweep, so a restored node lets other subjects' writes in. The sweep stores
        # the subjects it swept; should it fail, a restored node waits for the list again.
        reopened = self.awaiting_list
        if reopened:
            self.awaiting_list = False
            log.info(
                "the cluster's list of erased subjects has arrived; writes about data subjects are accepted"
            )
        if self._unswept or reopened:
            sweep = self._sweep_remnants(cluster, holds, reopened)
            self._track(asyncio.create_task(sweep, name="erasure-remnants"))

    async def _sweep_remnants(
        self, cluster: ClusterSpec, holds: tuple[LegalHold, ...], reopened: bool = False
    ) -> None:
        """Erases what the store still holds of the listed subjects not swept yet, then stores
        the list of those swept. One sweep at a time: each takes the subjects left when it
        begins, and stores none that a sweep has not finished (a subject stored as listed is
        never swept again, even after a restart)."""
        async with self._sweeping:
            key, wanted = self.erased_key, dict(self._unswept)
            try:
                found = (
                    await self.offload.run(_subjects_hashing_to, self.engine, key, wanted) if wanted else {}
                )
                for subject_id, request_id in found.items():
                    log.warning("erasing what the store still holds of a subject erased by %s", request_id)
                    await self.erase(ErasureOrder(request_id, subject_id, self.now_ms()), cluster, holds)
                if key != self.erased_key:
                    return  # a new list replaced this one meanwhile: its own sweep stores it
                listed = sorted(
                    (digest, rid)
                    for digest, rid in self.erased_list.items()
                    if digest in wanted or digest not in self._unswept
                )

                def persist(engine: StorageEngine) -> None:
                    store_erased_list(engine, key, listed)

                await self.committer.run(persist)
                for digest in wanted:
                    self._unswept.pop(digest, None)
            except Exception:
                # The subjects stay refused here and unswept: the next registration sweeps them.
                log.exception("sweep of erased subjects failed; it runs again at the next registration")
                if reopened:
                    self.awaiting_list = True

    def refusal(self, write: LocalWrite) -> DomicileError | None:
        """The group committer's last check of a local write, on the writer thread: a write about
        an erased subject that passed the service's check before the block, and reaches the
        writer after it, must not commit (the erasure's read of the subject's keys happens after
        the block is stored, on the same thread, so it would miss this write). Tombstones pass."""
        if write.tombstone:
            return None
        request_id = self.erased_by(write.subject_id)
        if not request_id:
            return None
        self.refused_in_writer += 1
        return ErasedInFlight(request_id)

    def blocks(
        self, cluster: ClusterSpec, holds: tuple[LegalHold, ...], namespace: str, key: str, subject_id: str
    ) -> str:
        """The erasure request that keeps this record of another region out, or "" when it may
        come in: its subject was erased here and nothing (a hold, a legal obligation) keeps it,
        or something keeps it but this region can no longer hold it: the erasure destroyed the
        subject's key of the record's class before the hold was placed, and a destroyed key is
        never created again, so the record could not be sealed here (the regions that still
        have it keep it)."""
        erased_by = self.erased_by(subject_id)
        if not erased_by:
            return ""
        if not keep_reason(cluster, holds, namespace, key, subject_id):
            return erased_by
        if self.keyring.was_destroyed(subject_id, key_class(cluster, namespace)):
            return erased_by
        return ""

    async def _block(self, subject_id: str, request_id: str) -> None:
        digest = subject_hash(self.subject_key, subject_id)
        if self._stored_blocks.get(digest) == request_id:
            return
        # In memory first, so that the writer's last check refuses the subject from now on; a
        # retry after a failed store finds the mark but not the stored block, and stores it.
        self.blocked[digest] = request_id

        def persist(engine: StorageEngine) -> None:
            engine.block_subject(digest, request_id)

        await self.committer.run(persist)
        self._stored_blocks[digest] = request_id

    # -- orders -----------------------------------------------------------------------------

    def apply(
        self, orders: tuple[ErasureOrder, ...], cluster: ClusterSpec, holds: tuple[LegalHold, ...]
    ) -> None:
        """Starts every order this region has not reported yet (called with each topology)."""
        # Another daemon of the region (over the same database) may have carried an order out and
        # reported it before this one saw it (the order is then gone from the topology): its block
        # is in the store, not in memory here. One read per topology revision.
        self._track(asyncio.create_task(self._refresh_blocked(), name="erasure-blocks"))
        for order in orders:
            if self.region not in order.regions_pending or order.request_id in self._running:
                continue
            task = asyncio.create_task(
                self._carry_out(order, cluster, holds), name=f"erase-{order.request_id}"
            )
            self._running[order.request_id] = task
            task.add_done_callback(self._forget)
        # Releases not yet carried out (just noted, noted before a crash, or one that failed).
        self._holds = holds
        for hold_id in sorted(self.releases.keys() - self._releasing.keys()):
            task = asyncio.create_task(self.carry_out_release(hold_id, cluster), name=f"release-{hold_id}")
            self._releasing[hold_id] = task
            task.add_done_callback(self._forget)
        # Receipts of releases carried out that the coordinator does not have yet (it was
        # unreachable, or the node restarted before it answered).
        self._report_releases()

    async def _refresh_blocked(self) -> None:
        try:
            stored = await self.offload.run(self.engine.blocked_subjects)
        except Exception:
            log.exception("could not read the erasure block list; it is read again with the next topology")
            return
        self.blocked.update(stored)
        self._stored_blocks.update(stored)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for tasks in (self._running, self._releasing, self._reporting):
            for name, running in list(tasks.items()):
                if running is task:
                    del tasks[name]

    async def wait_idle(self) -> None:
        """Until no order, release, report, block-list read or sweep is under way."""
        while self._running or self._releasing or self._reporting or self._refreshing:
            tasks = [
                *self._running.values(),
                *self._releasing.values(),
                *self._reporting.values(),
                *self._refreshing,
            ]
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        tasks = [
            *self._running.values(),
            *self._releasing.values(),
            *self._reporting.values(),
            *self._refreshing,
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _carry_out(
        self, order: ErasureOrder, cluster: ClusterSpec, holds: tuple[LegalHold, ...]
    ) -> None:
        try:
            receipt = self.receipts.get(order.request_id)
            if receipt is None:
                receipt = await self.erase(order, cluster, holds)
            await self.report(order.request_id, receipt)
            log.info("erasure %s reported by %s", order.request_id, self.region)
            # The coordinator has it (and the audit trail has it for good): forget the copy kept
            # for re-reporting, so the kept receipts stay bounded.
            self.receipts.pop(order.request_id, None)
            await self._save_receipts()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The order stays pending at the coordinator; the next topology revision or restart
            # runs it again (every step is idempotent).
            log.exception("erasure %s failed in %s; it will be retried", order.request_id, self.region)

    async def erase(
        self, order: ErasureOrder, cluster: ClusterSpec, holds: tuple[LegalHold, ...]
    ) -> RegionReceipt:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._passes.add(done)
        try:
            return await self._erase(order, cluster, holds)
        finally:
            self._passes.discard(done)
            done.set_result(None)

    async def _erase(
        self, order: ErasureOrder, cluster: ClusterSpec, holds: tuple[LegalHold, ...]
    ) -> RegionReceipt:
        started = self.now_ms()
        subject = order.subject_id
        # The DPO who asked (verified by the coordinator); the request id is in each entry too.
        principal = order.requested_by or f"request:{order.request_id}"
        await self._block(subject, order.request_id)
        erased: collections.Counter[str] = collections.Counter()
        kept: list[KeptRecord] = []
        kept_classes: set[str] = set()
        # Read in one hop, after the block (later writes of the subject are refused); each
        # tombstone supersedes only the versions read here.
        for namespace, key, state in await self.offload.run(_subject_states, self.engine, subject):
            # Only the subject's own live versions: the key may since hold another subject's.
            mine = [v for v in state.live() if v.subject_id == subject]
            if not mine:
                if _tombstoned(state, subject) and not keep_reason(cluster, holds, namespace, key, subject):
                    # Erased before this node came to it: another region's erasure of the subject
                    # (or a delete) reached it by replication first. The region holds none of it
                    # either way, so its receipt counts it: what a receipt says of a region does
                    # not depend on whose tombstone arrived first.
                    await self.audit.record(
                        principal=principal, action=ERASE_ACTION, namespace=namespace, key=key,
                        subject_id=subject, decision="erase",
                        detail=f"request={order.request_id} already tombstoned here",
                    )  # fmt: skip
                    erased[namespace] += 1
                continue
            classes = {sealed_key_class(v.value) or key_class(cluster, namespace) for v in mine}
            reason = keep_reason(cluster, holds, namespace, key, subject)
            if reason:
                kept.append(KeptRecord(namespace, key, reason))
                kept_classes.update(classes)
                await self.audit.record(
                    principal=principal, action=ERASE_ACTION, namespace=namespace, key=key,
                    subject_id=subject, decision="keep", detail=reason[:1000],
                )  # fmt: skip
                continue
            await self._erase_record(principal, namespace, key, subject, mine, f"request={order.request_id}")
            erased[namespace] += 1
        destroyed = await self._destroy_unkept(subject, kept_classes)
        receipt = RegionReceipt(
            region=self.region,
            node_id=self.node_id,
            started_ms=started,
            completed_ms=self.now_ms(),
            erased=tuple(sorted(erased.items())),
            kept=tuple(kept[:RECEIPT_KEPT_MAX]),
            keys_destroyed=destroyed,
            kept_total=len(kept),
        )
        summary = {
            "request": order.request_id,
            "erased": dict(receipt.erased),
            "kept": [{"namespace": k.namespace, "key": k.key, "reason": k.reason} for k in kept[:20]],
            "kept_total": len(kept),
            "keys_destroyed": destroyed,
            "started_ms": started,
            "completed_ms": receipt.completed_ms,
        }
        detail = json.dumps(summary, sort_keys=True, separators=(",", ":"))
        if len(detail) > 1000:  # the audit entry's limit: the counts always fit, the list may not
            summary["kept"] = f"{len(kept)} records (listed in the request's receipt)"
            detail = json.dumps(summary, sort_keys=True, separators=(",", ":"))
        seq = await self.audit.record(
            principal=principal, action=RECEIPT_ACTION, subject_id=subject, decision="erase", detail=detail
        )
        receipt = dataclasses.replace(receipt, audit_seq=seq)
        self.receipts[order.request_id] = receipt
        await self._save_receipts()
        self.completed_total += 1
        log.info(
            "erasure %s in %s: %d erased, %d kept, %d keys destroyed",
            order.request_id, self.region, receipt.erased_total, len(kept), destroyed,
        )  # fmt: skip
        return receipt

    async def _erase_record(
        self, principal: str, namespace: str, key: str, subject: str, mine: list[Version], detail: str
    ) -> None:
        """Audits the erasure of the subject's versions of one record, then writes their
        tombstones (write-ahead: what the trail cannot record does not happen)."""
        await self.audit.record(
            principal=principal, action=ERASE_ACTION, namespace=namespace, key=key,
            subject_id=subject, decision="erase", detail=detail[:1000],
        )  # fmt: skip
        await self._tombstone(namespace, key, mine)

    async def _destroy_unkept(self, subject: str, kept_classes: set[str]) -> int:
        """Destroys the subject's keys of every class that kept nothing; the number destroyed.
        The key store commits and checkpoints, so the work runs off the event loop. Called even
        when nothing is doomed: a rerun after a destroy that deleted the keys but failed to
        truncate the WAL finds no key class left, and must still finish that step."""
        held_classes = await self.offload.run(self.keyring.key_classes, subject)
        doomed = [c for c in held_classes if c not in kept_classes]
        return await self.offload.run(self.keyring.destroy, subject, doomed)

    # -- released holds ----------------------------------------------------------------------

    async def note_released(self, released: list[PendingRelease]) -> None:
        """Notes holds just released, durably, before the set of holds without them is stored:
        a crash in between must not lose a release (the stored set would no longer show it).
        The next apply() carries them out."""
        fresh = {p.hold.hold_id: p for p in released if p.hold.hold_id not in self.releases}
        if not fresh:
            return
        # Durable first: noted in memory only, a failed write would make the same set, when it
        # comes again, look as if it had been noted, and then be stored without the hold.
        await self._save_releases({**self.releases, **fresh})
        self.releases.update(fresh)

    async def reinstated(self, holds: tuple[LegalHold, ...]) -> None:
        """Drops the notes of releases whose hold the coordinator's set has again (restored to a
        point before the release): in force, it keeps what it covers. A pass under way for it
        stops. Only for a set from the coordinator: at a start, the stored set may still name a
        hold noted just before a crash."""
        back = [hold_id for hold_id in self.releases if hold_id in {h.hold_id for h in holds}]
        if not back:
            return
        for hold_id in back:
            task = self._releasing.pop(hold_id, None)
            if task is not None:
                task.cancel()
            log.warning(
                "hold %s is in force again in %s: what it keeps of erased subjects is no longer "
                "erased at its release",
                hold_id,
                self.region,
            )
        remaining = {k: v for k, v in self.releases.items() if k not in back}
        await self._save_releases(remaining)
        self.releases = remaining

    async def _save_releases(self, releases: dict[str, PendingRelease] | None = None) -> None:
        blob = releases_to_bytes(dict(self.releases if releases is None else releases))

        def persist(engine: StorageEngine) -> None:
            engine.put_meta(RELEASES_META, blob)

        await self.committer.run(persist)

    async def carry_out_release(self, hold_id: str, cluster: ClusterSpec) -> None:
        """Erases what the noted release of `hold_id` let go of, then clears the note (apply()
        starts it; a failure leaves the note for the next apply() or start)."""
        try:
            pending = self.releases[hold_id]
            # Erasures that began before the release act on the holds of then: one of them may
            # still keep a record under this hold, after this pass has looked.
            await asyncio.gather(*list(self._passes), return_exceptions=True)
            found = await self.offload.run(erased_subjects_held_by, self.engine, pending.hold, self.erased_by)
            for subject_id, request_id in sorted(found.items()):
                await self.erase_released(subject_id, request_id, pending, cluster, self._in_force())
            self.releases.pop(hold_id, None)
            await self._save_releases()
            self._report_releases()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Still noted: the next subject orders, topology revision or restart run it again
            # (every step is idempotent).
            log.exception(
                "erasing what released hold %s kept failed in %s; it will be retried", hold_id, self.region
            )

    def _in_force(self) -> tuple[LegalHold, ...]:
        """The holds in force: a release noted before a crash may be in the set stored then."""
        return tuple(h for h in self._holds if h.hold_id not in self.releases)

    async def erase_released(
        self,
        subject: str,
        request_id: str,
        release: PendingRelease,
        cluster: ClusterSpec,
        holds: tuple[LegalHold, ...],
    ) -> int:
        """Erases what the subject, erased by `request_id`, still has here that nothing keeps
        any more now that `release` ended its hold; then destroys the subject's keys of every
        class that keeps nothing. Audited like the erasure (an entry per record and a receipt),
        as the DPO who released the hold, and kept as a receipt for the coordinator (stored
        before the release's note is cleared; reported by _report_releases). Returns the records
        erased; a rerun finds none and records nothing."""
        started = self.now_ms()
        principal = release.released_by or "coordinator"
        hold = release.hold
        erased: collections.Counter[str] = collections.Counter()
        kept_classes: set[str] = set()
        kept = 0
        for namespace, key, state in await self.offload.run(_subject_states, self.engine, subject):
            mine = [v for v in state.live() if v.subject_id == subject]
            if not mine:
                continue
            if keep_reason(cluster, holds, namespace, key, subject):
                # Another hold or a legal obligation still keeps it (audited when it was kept).
                kept += 1
                kept_classes.update(sealed_key_class(v.value) or key_class(cluster, namespace) for v in mine)
                continue
            detail = f"request={request_id} kept under {hold.describe()}; erased at its release"
            await self._erase_record(principal, namespace, key, subject, mine, detail)
            erased[namespace] += 1
        destroyed = await self._destroy_unkept(subject, kept_classes)
        if not erased and not destroyed:
            return 0
        receipt = RegionReceipt(
            region=self.region,
            node_id=self.node_id,
            started_ms=started,
            completed_ms=self.now_ms(),
            erased=tuple(sorted(erased.items())),
            keys_destroyed=destroyed,
            kept_total=kept,
            released_hold_id=hold.hold_id,
        )
        summary = {
            "request": request_id,
            "released_hold": hold.hold_id,
            "erased": dict(receipt.erased),
            "kept_total": kept,
            "keys_destroyed": destroyed,
            "completed_ms": receipt.completed_ms,
        }
        seq = await self.audit.record(
            principal=principal, action=RECEIPT_ACTION, subject_id=subject, decision="erase",
            detail=json.dumps(summary, sort_keys=True, separators=(",", ":")),
        )  # fmt: skip
        key = release_receipt_key(request_id, hold.hold_id)
        self.release_receipts[key] = (request_id, dataclasses.replace(receipt, audit_seq=seq))
        await self._save_release_receipts()
        total = sum(erased.values())
        self.release_erased_total += total
        log.info(
            "erasure %s in %s at the release of hold %s: %d erased, %d still kept, %d keys destroyed",
            request_id, self.region, hold.hold_id, total, kept, destroyed,
        )  # fmt: skip
        return total

    def _report_releases(self) -> None:
        """Starts a report of every stored release receipt not being reported already."""
        for key in sorted(self.release_receipts.keys() - self._reporting.keys()):
            task = asyncio.create_task(self._report_release(key), name=f"release-receipt-{key}")
            self._reporting[key] = task
            task.add_done_callback(self._forget)

    async def _report_release(self, key: str) -> None:
        try:
            while (current := self.release_receipts.get(key)) is not None:
                request_id, receipt = current
                # Retries until the coordinator answers (self.report); one that refuses the
                # receipt is logged there and not asked again: retrying it cannot help.
                await self.report(request_id, receipt)
                log.info(
                    "erasure %s at the release of hold %s reported by %s",
                    request_id, receipt.released_hold_id, self.region,
                )  # fmt: skip
                # The coordinator has it (the audit trail has it for good). A rerun of the
                # release may have stored another receipt meanwhile: the loop reports that one.
                if self.release_receipts.get(key) == current:
                    del self.release_receipts[key]
                    await self._save_release_receipts()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "reporting the erasure receipt %s of a released hold failed in %s; it will be retried",
                key, self.region,
            )  # fmt: skip

    async def _save_release_receipts(self) -> None:
        rows = {
            key: {"request": request_id, "receipt": _receipt_to_json(receipt)}
            for key, (request_id, receipt) in self.release_receipts.items()
        }
        blob = json.dumps(rows, sort_keys=True).encode()

        def persist(engine: StorageEngine) -> None:
            engine.put_meta(RELEASE_RECEIPTS_META, blob)

        await self.committer.run(persist)

    async def _save_receipts(self) -> None:
        blob = json.dumps(
            {rid: _receipt_to_json(r) for rid, r in self.receipts.items()}, sort_keys=True
        ).encode()

        def persist(engine: StorageEngine) -> None:
            engine.put_meta(RECEIPTS_META, blob)

        await self.committer.run(persist)

    async def _tombstone(self, namespace: str, key: str, versions: list[Version]) -> None:
        newest = max(versions, key=lambda v: v.hlc)
        # Supersedes exactly the subject's versions (another subject's sibling stays). No
        # placement decision: removing data is always allowed where the data is.
        await self.committer.submit(
            LocalWrite.deleting(namespace, key, newest, CausalContext.of(dots=[v.dot for v in versions]))
        )
        self.on_committed()


def release_receipt_key(request_id: str, hold_id: str) -> str:
    """The key of the receipt of what a release of `hold_id` erased for `request_id`: one per
    pair (a rerun of the release replaces it)."""
    return f"{request_id} {hold_id}"


def _tombstoned(state: KeyState, subject_id: str) -> bool:
    """Whether a tombstone about the subject supersedes what the key held of them."""
    return any(v.tombstone and v.subject_id == subject_id for v in state.versions)


def _subject_states(engine: StorageEngine, subject_id: str) -> list[tuple[str, str, KeyState]]:
    """Every key that holds or held the subject's data, with its state, in key order. Blocks."""
    out = []
    keys = engine.subject_keys(subject_id)
    for namespace, group in itertools.groupby(keys, key=lambda nk: nk[0]):
        names = [key for _, key in group]
        for i in range(0, len(names), STATES_PER_READ):
            states = engine.get_many(namespace, names[i : i + STATES_PER_READ])
            out += [(namespace, key, states[key]) for key in names[i : i + STATES_PER_READ] if key in states]
    return out


def _receipt_to_json(r: RegionReceipt) -> dict[str, object]:
    return {
        "region": r.region,
        "node_id": r.node_id,
        "started_ms": r.started_ms,
        "completed_ms": r.completed_ms,
        "erased": [list(e) for e in r.erased],
        "kept": [[k.namespace, k.key, k.reason] for k in r.kept],
        "keys_destroyed": r.keys_destroyed,
        "audit_seq": r.audit_seq,
        "kept_total": r.kept_total,
        "released_hold_id": r.released_hold_id,
    }


def _receipt_from_json(d: dict[str, Any]) -> RegionReceipt:
    return RegionReceipt(
        region=str(d["region"]),
        node_id=str(d["node_id"]),
        started_ms=int(d["started_ms"]),
        completed_ms=int(d["completed_ms"]),
        erased=tuple((str(n), int(c)) for n, c in d["erased"]),
        kept=tuple(KeptRecord(str(n), str(k), str(r)) for n, k, r in d["kept"]),
        keys_destroyed=int(d["keys_destroyed"]),
        audit_seq=int(d["audit_seq"]),
        kept_total=int(d.get("kept_total", len(d["kept"]))),
        released_hold_id=str(d.get("released_hold_id", "")),
    )


def _subjects_hashing_to(engine: StorageEngine, key: bytes, wanted: dict[str, str]) -> dict[str, str]:
    """Subject id -> request id of every subject with a live version in the store whose hash
    under key is wanted (one pass over a snapshot; each subject id is hashed once)."""

    seen: dict[str, str] = {}
    found: dict[str, str] = {}
    with engine.snapshot() as rows:
        for _, _, blob in rows:
            for version in key_state_from_bytes(blob).versions:
                subject = version.subject_id
                # A tombstone names its subject too, but holds nothing of it.
                if version.tombstone or not subject or subject in seen:
                    continue
                request_id = wanted.get(subject_hash(key, subject), "")
                seen[subject] = request_id
                if request_id:
                    found[subject] = request_id
    return found
