"""Sends the audit log's signed heads to the coordinator, so that a later rewrite or truncation
of the log contradicts a head kept outside the region's control.

Heads are coalesced: only the newest one waiting is sent (each covers all before it), at most
one every `interval_s` (so a busy node sends a few heads a second, not one per batch). The
audit writer's thread offers the log's new size after each batch (offer_grown), and the head
is signed (`sign`) only when the exporter takes it to send: signing each batch's head cost an
Ed25519 signature per group commit, nearly all of them for heads never sent. Heads and sizes
are offered from the audit writer's thread; the event loop is woken only while the exporter
waits for a head, not for each head offered while it sleeps between exports. While the
coordinator is unreachable the exporter retries with back-off; a head the coordinator refuses
(the log shrank, forked or changed key) is logged and counted, and the next head is tried.

A head longer than the one on record goes with the proof that the log extends it: the hash of
the log's entry at the recorded size (coordinator/audit_heads.py). The exporter knows it for the
head it last had accepted; at start, or when the coordinator holds another size, the answer
names the size and the exporter reads that entry's hash from the log and sends again. A node
that became a new incarnation (restored, or found rewound at start) says so, and its chain
starts again at the coordinator, the old one kept there as closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable

import grpc

from domicile.audit import SignedHead
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.retry import Backoff, BackoffPolicy
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.wire.audit import head_to_pb
from node.metrics import NodeMetrics

log = logging.getLogger("domicile.audit.export")


class HeadNotTaken(Exception):
    """The coordinator answered without taking the head (it wants a proof the exporter cannot give)."""


class HeadExporter:
    def __init__(
        self,
        *,
        coordinator: str,
        dialer: Dialer,
        metrics: NodeMetrics,
        backoff: BackoffPolicy,
        rpc_deadline_s: float,
        interval_s: float = 0.2,
        rng: random.Random | None = None,
        sign: Callable[[], SignedHead] | None = None,
        hash_at: Callable[[int], Awaitable[bytes]] | None = None,
        incarnation: int = 0,
    ) -> None:
        self.interval_s = interval_s
        self.coordinator = coordinator
        self.dialer = dialer
        self.metrics = metrics
        self.backoff = backoff
        self.rpc_deadline_s = rpc_deadline_s
        self.rng = rng or random.Random()
        self.exported_size = 0
        # The signed head of the durable log now (the audit log's head()): for a size offered.
        self.sign = sign
        # The chain hash of the log's entry at a size (b"": none), for the proof of extension.
        self.hash_at = hash_at
        # The node's incarnation: a later one than on record starts a new chain at the coordinator.
        self.incarnation = incarnation
        # (size, hash) of the head the coordinator last took from this exporter: the proof the
        # next head goes with.
        self._extends: tuple[int, bytes] = (0, b"")
        # The newest size offered, with its signed head when it came signed.
        self._pending: tuple[int, SignedHead | None] | None = None
        self._wake = asyncio.Event()
        # Guards _pending and _waiting: offer() runs on the audit writer's thread.
        self._lock = threading.Lock()
        self._waiting: asyncio.AbstractEventLoop | None = None

    def offer(self, head: SignedHead) -> None:
        """Queues a head (newest wins), from any thread; never blocks the audit writer."""
        self._offer(head.size, head)

    def offer_grown(self, size: int) -> None:
        """The log is durable up to `size`: its head is signed (by `sign`) when the exporter
        takes it to send. From any thread; never blocks the audit writer."""
        self._offer(size, None)

    def _offer(self, size: int, head: SignedHead | None) -> None:
        with self._lock:
            if self._pending is not None and size < self._pending[0]:
                return
            self._pending = (size, head)
            loop, self._waiting = self._waiting, None
        if loop is not None:
            # A closed loop raises RuntimeError: the exporter is gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    async def _next(self) -> SignedHead:
        """The newest head offered, waiting for one when none is; a size offered is signed now
        (the head of the durable log now, which covers it: the log only grows)."""
        while True:
            with self._lock:
                pending, self._pending = self._pending, None
                if pending is None:
                    self._wake.clear()
                    self._waiting = asyncio.get_running_loop()
            if pending is not None:
                size, head = pending
                if head is not None:
                    return head
                if self.sign is None:
                    raise RuntimeError(f"audit log size {size} offered to an exporter that cannot sign")
                try:
                    return self.sign()
                except Exception:
                    # Never end the exporter: an unexported head leaves the log unanchored.
                    log.exception("signing the audit head of size %d failed; retrying", size)
                    await asyncio.sleep(self.interval_s)
                    self._offer(size, None)
                    continue
            await self._wake.wait()

    async def run(self) -> None:
        async with self.dialer.channel(self.coordinator, ExpectedPeer.coordinator()) as channel:
            stub = cpb_grpc.CoordinatorServiceStub(channel)
            # A failed export waits at most 2 s whatever the back-off: until a head is exported, the
            # log is not anchored outside the region.
            backoff = Backoff(self.backoff, self.rng, cap_s=2.0)
            while True:
                head = await self._next()
                if head.size <= self.exported_size:
                    continue
                try:
                    await self._send(stub, head)
                    backoff.reset()
                    await asyncio.sleep(self.interval_s)
                except HeadNotTaken as exc:
                    self.metrics.audit_export_refused.inc()
                    log.error("coordinator did not take audit head at size %d: %s", head.size, exc)
                    await asyncio.sleep(self.interval_s)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        self.metrics.audit_export_refused.inc()
                        log.error("coordinator refused audit head at size %d: %s", head.size, exc.details())
                        await asyncio.sleep(self.interval_s)
                        continue
                    log.info("audit head export failed (%s); retrying", exc.code().name)
                    self.offer(head)
                    await backoff.wait()
                except Exception:
                    # Never end the exporter: an unexported head leaves the log unanchored.
                    log.exception("audit head export failed unexpectedly; retrying")
                    self.offer(head)
                    await backoff.wait()

    async def export_last(self, head: SignedHead) -> bool:
        """Sends `head` once, on a channel of its own, unless a head as long was exported; for the
        head of a log that has closed (the node is stopping), which run() is no longer there to
        send. Returns whether the coordinator holds a head this long now. A refused or failed
        send is logged and returns False, so that a node whose coordinator is unreachable still
        stops (its next start offers the head)."""
        if head.size <= self.exported_size:
            return True
        try:
            async with self.dialer.channel(self.coordinator, ExpectedPeer.coordinator()) as channel:
                await self._send(cpb_grpc.CoordinatorServiceStub(channel), head)
        except HeadNotTaken as exc:
            self.metrics.audit_export_refused.inc()
            log.error("coordinator did not take the closing audit head at size %d: %s", head.size, exc)
            return False
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                self.metrics.audit_export_refused.inc()
                log.error(
                    "coordinator refused the closing audit head at size %d: %s", head.size, exc.details()
                )
            else:
                log.warning(
                    "the closing audit head (size %d) was not exported (%s); the next start offers it",
                    head.size,
                    exc.code().name,
                )
            return False
        return self.exported_size >= head.size

    async def _send(self, stub: cpb_grpc.CoordinatorServiceStub, head: SignedHead) -> None:
        request = cpb.ExportAuditHeadRequest()
        head_to_pb(head, request.head)
        request.extends_size, request.extends_hash = self._extends
        request.incarnation = self.incarnation
        response = await stub.ExportAuditHead(request, timeout=self.rpc_deadline_s)
        recorded = response.accepted_size
        if recorded < head.size and recorded != request.extends_size and self.hash_at is not None:
            # The coordinator holds a head of another size than this exporter last had taken
            # (this is its first head since start, or the coordinator's record is older): the
            # proof is this log's entry at that size. A log without it, or with another entry
            # there, is refused.
            request.extends_size, request.extends_hash = recorded, await self.hash_at(recorded)
            response = await stub.ExportAuditHead(request, timeout=self.rpc_deadline_s)
            recorded = response.accepted_size
        if recorded < head.size:
            raise HeadNotTaken(
                f"the coordinator holds {recorded} entries and took no proof that this log "
                f"({head.size} entries) extends them"
            )
        if recorded == head.size:
            self._extends = (head.size, head.head)
        self.exported_size = max(self.exported_size, recorded)
        self.metrics.audit_exported_size.set(self.exported_size)
        self.metrics.audit_exported_time.set(time.time())
