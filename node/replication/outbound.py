"""The sending end of one replication link: stream this node's change log to one target.

One long-lived bidirectional stream per link. The target says where to resume; the sender
reads the change log from there (from the in-memory tail, node.engine.log_tail, when the target
is close behind; otherwise from the store, off the event loop), keeps at most
`inflight_batches_max` batches unacknowledged, and on any failure reconnects with exponential
back-off and jitter. Positions are the target's
to keep, so a reconnect re-sends at most the unacknowledged tail, which the target skips.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from domicile.causality import Mutation, Version
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.model import Limits
from domicile.policy import Action, RecordFacts
from domicile.retry import Backoff, BackoffPolicy, grpc_reconnect_options, retry_forever
from domicile.topology import NodeInfo
from domicile.v1 import replication_pb2 as rpb
from domicile.wire.limits import NODE_MESSAGE_BYTES_MAX
from domicile.wire.records import mutation_to_pb
from node.compliance.enforcer import Audit, Enforcer
from node.crypto.sealing import Sealer, needs_opening
from node.engine.base import StorageEngine
from node.engine.log_tail import LogTail
from node.metrics import NodeMetrics
from node.offload import Offload
from node.replication.batch_wire import batch_request, framed_mutation, serialize_request
from node.replication.cadence import Cadence
from node.replication.encoded import EncodedLog
from node.replication.held_position import HeldPosition
from node.replication.send_audit import SentBatch
from node.replication.session_channel import SessionChannels
from node.replication.signal import LogSignal
from node.replication.stages import Stages
from node.replication.window import SendWindow
from node.topology_view import TopologyView

log = logging.getLogger("domicile.replication.outbound")
T = TypeVar("T")

REPLICATE_METHOD = "/domicile.v1.ReplicationService/Replicate"

# Bootstraps a target behind the truncated log (node.replication.bootstrap.bootstrap_if_behind
# bound to its source): given the call, the target's position, the target, the link's
# namespaces and the step deadline, returns the position to stream after.
Bootstrap = Callable[[grpc.aio.StreamStreamCall, int, NodeInfo, frozenset[str], float], Awaitable[int]]

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", NODE_MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", NODE_MESSAGE_BYTES_MAX),
    # Detect a dead peer on an idle stream within about 15 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class LinkSender:
    def __init__(
        self,
        *,
        node_id: str,
        region: str,
        target: NodeInfo,
        dialer: Dialer,
        namespaces: frozenset[str],
        engine: StorageEngine,
        view: TopologyView,
        enforcer: Enforcer,
        sealer: Sealer,
        metrics: NodeMetrics,
        limits: Limits,
        signal: LogSignal,
        backoff: BackoffPolicy,
        acked_lsn: int = 0,
        rng: random.Random | None = None,
        offload: Offload | None = None,
        log_tail: LogTail | None = None,
        epoch: int = 0,
        on_ack: Callable[[], None] = lambda: None,
        bootstrap: Bootstrap | None = None,
        cadence: Cadence | None = None,
        encoded: EncodedLog | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        # Wire messages shared by every link of this node (None: each batch encodes its own).
        self.encoded = encoded
        # When the link may ship: its namespaces' sync mode (realtime unless configured).
        self.cadence = cadence or Cadence()
        # This node's incarnation, sent in the hello (its writes carry writer id node_id.epoch).
        self.epoch = epoch
        self.enforcer = enforcer
        # Called after every ack that moves the position (writes waiting for regions, see
        # ReplicationManager.wait_regions).
        self.on_ack = on_ack
        self.sealer = sealer
        self.node_id = node_id
        self.region = region
        self.target = target
        self.dialer = dialer
        self.namespaces = namespaces
        self.engine = engine
        self.view = view
        self.metrics = metrics
        self.limits = limits
        self.signal = signal
        self.backoff = backoff
        self.rng = rng or random.Random()
        # The delays between reconnects of this link.
        self.reconnects = Backoff(backoff, self.rng)
        self.offload = offload or Offload()
        # The newest change-log entries in memory (the group committer appends them); without
        # one, every batch is read from the store.
        self.log_tail = log_tail
        # The position persisted for this target (the manager read it off the event loop).
        self.acked_lsn = acked_lsn
        self._log_end = 0
        self.connected = False
        # From the target's ready to the session's end, its bootstrap included (connected is set
        # only once the link streams): while it is open the link holds change-log truncation,
        # so that a bootstrap is not overtaken by the truncation it was made for.
        self.session_open = False
        self.last_error = ""
        self._labels = (node_id, target.node_id)
        # The series this link updates per batch and per ack, looked up once.
        self._sent_counter = metrics.replication_sent.labels(*self._labels)
        self._backlog_gauge = metrics.replication_backlog.labels(*self._labels)
        self._stages = Stages(metrics, node_id, target.node_id)
        # Each session opens its stream on a channel of its own (node.replication.session_channel:
        # a channel's later calls inherit the memory its earlier calls grew to).
        self._channels = SessionChannels(self._open_channel)

    # -- batching (testable without sockets) ---------------------------------------------------

    def _allowed(self, m: Mutation) -> tuple[bool, tuple[str, str] | None]:
        """Whether the target may hold this record, decided and audited; the second item is
        the decision's rule and policy version when the record needs no audit entry of its own
        (allowed, not personal, not redacted: its batch's entry covers it,
        node.replication.send_audit), else None (its own entry was recorded, "sent" or
        "withheld")."""
        if m.namespace not in self.namespaces:
            return False, None
        facts = RecordFacts(
            m.namespace, m.version.classification, m.version.subject_id, m.version.subject_jurisdiction
        )
        # Audited either way: "sent" or "withheld" is the copy's provenance.
        decision, entry = self.enforcer.decide(
            facts,
            Action.REPLICATE,
            audit_action=Audit.REPLICATE_SEND,
            principal=f"node:{self.node_id}",
            key=m.key,
            region=self.target.region,
            detail=f"to={self.target.node_id} lsn={m.lsn}",
            always_audit=False,
        )
        if entry is None and decision.allowed:
            return True, (decision.rule, self.enforcer.policy_version)
        return decision.allowed, None

    def _record_batch_entries(self, sent: SentBatch) -> None:
        """One entry per (namespace, rule, policy version) for the batch's records that have
        none of their own; like theirs, recorded before the batch is written to the stream.
        The send does not wait for them to be durable (README: audit trail), so they are not
        urgent: they share the audit log's next commit with the carried entries of that time
        instead of making it commit (and fsync) once per batch sent."""
        audit = self.enforcer.audit
        for namespace, rule, policy_version, detail in sent.entries():
            audit.record(
                principal=f"node:{self.node_id}",
                action=Audit.REPLICATE_SEND,
                namespace=namespace,
                decision="allow",
                rule=rule,
                policy_version=policy_version,
                detail=detail,
                urgent=False,
            )

    async def next_batch(self, after_lsn: int) -> tuple[list[Mutation], int] | None:
        """The next batch after `after_lsn`: mutations the target may hold, and the position the
        batch carries the target to (past skipped entries too). None when the log has nothing."""
        limit = self.limits.replication_batch_records_max
        tail = self.log_tail.read(after_lsn, limit) if self.log_tail is not None else None
        opened: dict[int, Version | Exception | None]
        if tail is not None:
            # The common case, a target close behind: the entries are in memory, so no store
            # read and no hop; values to open are opened below, in a hop only if there are any.
            entries, self._log_end = tail
            opened = {}
        else:
            entries, opened, self._log_end = await self.offload.run(
                self._read_log, after_lsn, self.namespaces
            )
        if not entries:
            return None
        batch: list[Mutation] = []
        through = after_lsn
        size = 0
        sent = SentBatch(self.target.node_id)
        for i, m in enumerate(entries):
            bytes_ = _batch_bytes(m)
            if batch and size + bytes_ > self.limits.replication_batch_bytes_max:
                break
            through = m.lsn
            allowed, batched = self._allowed(m)
            if allowed:
                if i in opened:
                    result = opened[i]
                elif needs_opening(m.version):
                    # Past what the read's hop opened (many values were held back), or read from
                    # the tail: one hop opens about a batch's worth from here.
                    opened.update(await self.offload.run(self._open_from, entries, i, self.namespaces))
                    result = opened[i]
                else:
                    result = m.version  # what open_version returns for it, without a hop
                # Shipped in clear (the target seals it under its own key); a value whose key
                # was destroyed is erased: its tombstone follows in the log.
                if isinstance(result, Exception):
                    raise result
                if result is None:
                    continue
                batch.append(m if result is m.version else dataclasses.replace(m, version=result))
                size += bytes_
                if batched is not None:
                    sent.add(m.namespace, *batched, m.lsn, m.key)
        if sent:
            self._record_batch_entries(sent)
        return batch, through

    def _read_log(
        self, after_lsn: int, namespaces: frozenset[str]
    ) -> tuple[list[Mutation], dict[int, Version | Exception | None], int]:
        """A page of the change log, its first batch's worth of values opened, and the log's last
        position (for the backlog). Blocks."""
        last = self.engine.last_lsn()
        entries = self.engine.read_log(after_lsn, self.limits.replication_batch_records_max)
        if entries[0].lsn != after_lsn + 1 if entries else last > after_lsn:
            # Truncated past the target's position (node.replication.truncation): a new session
            # bootstraps it.
            raise ConnectionError(f"the change log no longer holds position {after_lsn + 1}; reconnecting")
        end = max(last, entries[-1].lsn) if entries else last
        return entries, self._open_from(entries, 0, namespaces), end

    def _open_from(
        self, entries: list[Mutation], start: int, namespaces: frozenset[str]
    ) -> dict[int, Version | Exception | None]:
        """The values of the link's namespaces from entry `start` on, opened, by index, until
        about one batch's bytes are open. Whether the policy lets each one go is asked later, on
        the event loop (with its audit entry), so an error opening a value is kept, not raised:
        it matters only if that value is sent. Blocks (key lookups, AES-GCM)."""
        opened: dict[int, Version | Exception | None] = {}
        bytes_open = 0
        for i in range(start, len(entries)):
            m = entries[i]
            if m.namespace not in namespaces:
                continue
            try:
                opened[i] = self.sealer.open_version(m.namespace, m.key, m.version)
            except Exception as exc:
                opened[i] = exc
            bytes_open += _batch_bytes(m)
            if bytes_open > self.limits.replication_batch_bytes_max:
                break
        return opened

    # -- the stream ---------------------------------------------------------------------------

    async def run(self) -> None:
        await retry_forever(
            self._connected_session,
            self.reconnects,
            on_error=self._session_failed,
            before_wait=self.metrics.replication_reconnects.labels(*self._labels).inc,
        )

    async def _connected_session(self) -> None:
        try:
            await self._session()
        finally:
            self.connected = False
            self.session_open = False
            self.metrics.replication_connected.labels(*self._labels).set(0)

    def _session_failed(self, exc: Exception) -> None:
        # Any failure costs a reconnect, never data.
        self.last_error = _describe(exc)
        log.info("link %s -> %s: %s; reconnecting", self.node_id, self.target.node_id, self.last_error)

    async def _session(self) -> None:
        deadline_s = self.limits.rpc_deadline_s
        channel = await self._channels.for_new_session()
        # A replication stream lives as long as the link: no overall deadline. Each step that
        # waits on the peer (ready, acks) has its own deadline below instead. Batches are
        # written as bytes built from records serialized once (node.replication.batch_wire).
        replicate = channel.stream_stream(
            REPLICATE_METHOD,
            request_serializer=serialize_request,
            response_deserializer=rpb.ReplicateResponse.FromString,
        )
        call = replicate()
        await _within(
            call,
            call.write(
                rpb.ReplicateRequest(
                    hello=rpb.ReplicationHello(
                        source_node_id=self.node_id,
                        source_region=self.region,
                        target_node_id=self.target.node_id,
                        topology_revision=self.view.revision,
                        source_epoch=self.epoch,
                    )
                )
            ),
            deadline_s,
        )
        first = await _within(call, call.read(), deadline_s)
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "ready":
            raise ConnectionError("target did not answer the hello with ready")
        sent = first.ready.resume_after_lsn
        self.session_open = True
        # The target's own word on its position (lower than acknowledged after it lost state).
        self.acked_lsn = min(self.acked_lsn, sent)
        if self.bootstrap is not None:
            sent = await self.bootstrap(call, sent, self.target, self.namespaces, deadline_s)
        self._ack(sent)
        # The target answered: the delays start over. A session never ends without an error
        # (it streams until the link breaks), so retry_forever alone would never reset them, and
        # after a few failures every later reconnect would wait the longest delay.
        self.reconnects.reset()
        self.connected = True
        self.metrics.replication_connected.labels(*self._labels).set(1)
        # Acks are pipelined: up to replication_inflight_batches_max full batches' worth of
        # records may be unacknowledged (node.replication.window), however small the batches.
        window = SendWindow.of_batches(
            self.limits.replication_inflight_batches_max,
            self.limits.replication_batch_records_max,
            self.limits.replication_batch_bytes_max,
        )
        reader = asyncio.create_task(self._read_acks(call, window))
        # Positions past entries the target does not hold wait a moment (node.replication.held_position).
        held = HeldPosition(sent, span_max=self.limits.replication_batch_records_max)
        try:
            while True:
                if reader.done():
                    _reader_result(reader)
                    raise ConnectionError("target closed the stream")
                # Woken by a commit to a namespace of the link, or once the log is a batch read
                # past what the link has read (node.replication.signal).
                grown = self.signal.mark_for(
                    self, self.namespaces, sent + self.limits.replication_batch_records_max
                )
                batch = await self.next_batch(sent)
                if batch is None:
                    due_in = held.due_in(time.monotonic())
                    if due_in == 0.0:
                        await self._send(call, window, reader, [], held.take(), deadline_s)
                        continue
                    self.cadence.drained()
                    self._update_backlog()
                    await self._wait_for_log_or(reader, window, deadline_s, grown, due_in)
                    continue
                mutations, through = batch
                sent = through
                if not mutations:
                    if held.through is not None and not held.fits(through):
                        await self._send(call, window, reader, [], held.take(), deadline_s)
                    held.hold(through, time.monotonic())
                    if held.due_in(time.monotonic()) == 0.0:
                        # Held long enough while the log kept growing, or far enough.
                        await self._send(call, window, reader, [], held.take(), deadline_s)
                    continue
                if held.through is not None:
                    # Before the records, so that neither message moves the target further
                    # than a batch read would.
                    await self._send(call, window, reader, [], held.take(), deadline_s)
                await self._send(call, window, reader, mutations, through, deadline_s)
                held.sent(through)
        finally:
            self.signal.forget(self)
            reader.cancel()
            call.cancel()

    async def _send(
        self,
        call: grpc.aio.StreamStreamCall,
        window: SendWindow,
        reader: asyncio.Task[None],
        mutations: list[Mutation],
        through: int,
        deadline_s: float,
    ) -> None:
        """Writes one batch to the stream, once the link's turn has come and the window has room."""
        # A batch or scheduled link waits for its turn here.
        await self.cadence.ready(reader)
        size = sum(_batch_bytes(m) for m in mutations)
        await self._acquire(window, reader, len(mutations), size, deadline_s)
        request = batch_request(self._framed(mutations), through)
        window.sent(through, len(mutations), size, time.monotonic())
        await _write_within(call, request, deadline_s)
        if mutations:
            self._stages.since_commit("ship", mutations[0].version.hlc)
        self._sent_counter.inc(len(mutations))

    def _framed(self, mutations: list[Mutation]) -> list[bytes]:
        """The batch's records on the wire (node.replication.batch_wire). A record without a
        subject is shipped as stored (only a subject's value is sealed, and opened to ship), so
        its bytes are the ones every link shares (node.replication.encoded); a subject's record
        is encoded for this batch alone."""
        encoded = self.encoded
        if encoded is None:
            return [framed_mutation(mutation_to_pb(m)) for m in mutations]
        return [
            framed_mutation(mutation_to_pb(m)) if m.version.subject_id else encoded.framed(m)
            for m in mutations
        ]

    def _open_channel(self) -> grpc.aio.Channel:
        # The handshake itself insists on the target's node certificate, so a record is never
        # sent to whoever happens to answer at the address.
        expected = ExpectedPeer.node(self.target.region, self.target.node_id)
        # gRPC redials on the link's delays, so a target that comes back is reached promptly.
        options = [*CHANNEL_OPTIONS, *grpc_reconnect_options(self.backoff)]
        return self.dialer.channel(self.target.address, expected, options=options)

    async def close(self) -> None:
        await self._channels.close()

    async def _read_acks(
        self,
        call: grpc.aio.StreamStreamCall,
        window: SendWindow,
    ) -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            if response.WhichOneof("kind") != "ack":
                raise ConnectionError("target sent something other than an ack")
            position = response.ack.applied_through_lsn
            window.acked(position)
            self._ack(position)
            self._update_backlog()

    def _ack(self, position: int) -> None:
        if position > self.acked_lsn:
            self.acked_lsn = position
            self.on_ack()

    def _update_backlog(self) -> None:
        # Against the log's end as the tail knows it (it sees every commit), else as of the
        # sender's last read (it reads again as soon as the log grows), so that neither the idle
        # loop nor every ack costs another hop off the loop.
        end = self._log_end
        if self.log_tail is not None:
            end = max(end, self.log_tail.last_lsn or 0)
        backlog = max(0, end - self.acked_lsn)
        self._backlog_gauge.set(backlog)

    def _check_stalled(self, window: SendWindow, deadline_s: float) -> None:
        oldest = window.oldest_sent_at()
        if oldest is not None and time.monotonic() - oldest > deadline_s:
            raise TimeoutError(f"no acknowledgement within {deadline_s} s")

    async def _wait_for_log_or(
        self,
        reader: asyncio.Task[None],
        window: SendWindow,
        deadline_s: float,
        grown: list[asyncio.Future[None]],
        timeout_s: float | None = None,
    ) -> None:
        # On the signal's shared futures themselves: no task per wait (asyncio.wait never cancels
        # them).
        timeout = 1.0 if timeout_s is None else min(1.0, timeout_s)
        await asyncio.wait({*grown, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        self._check_stalled(window, deadline_s)

    async def _acquire(
        self, window: SendWindow, reader: asyncio.Task[None], records: int, bytes_: int, deadline_s: float
    ) -> None:
        while True:
            if window.fits(records, bytes_):
                return
            acquire = asyncio.ensure_future(window.wait_fits(records, bytes_))
            done, _ = await asyncio.wait(
                {acquire, reader}, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED
            )
            if acquire in done:
                return
            acquire.cancel()
            if reader in done:
                _reader_result(reader)
                raise ConnectionError("target closed the stream")
            self._check_stalled(window, deadline_s)


async def _within(call: grpc.aio.Call, step: Awaitable[T], timeout_s: float) -> T:
    """Awaits one step of a call with a timeout. Unlike asyncio.wait_for, a cancellation does not
    wait for the grpc.aio operation to acknowledge it (it may not): the call itself is cancelled,
    which fails every pending operation on it."""
    task = asyncio.ensure_future(step)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        call.cancel()
        task.cancel()
        raise
    if not done:
        call.cancel()
        task.cancel()
        raise TimeoutError(f"no answer from the peer within {timeout_s} s")
    return task.result()


def _reader_result(reader: asyncio.Task[None]) -> None:
    """Raises what ended the ack reader. A reader cancelled with its call (a call cancelled
    locally, e.g. by a write's deadline) ends the session as an error: a CancelledError escaping
    here would end the link's sender task, which nothing restarts."""
    if reader.cancelled():
        raise ConnectionError("the stream's call was cancelled")
    reader.result()


async def _write_within(
    call: grpc.aio.StreamStreamCall, request: rpb.ReplicateRequest | bytes, timeout_s: float
) -> None:
    """_within for a batch write, the step taken for every batch on every link: a timer that
    cancels the call, instead of a task and a wait. grpc.aio's write cancels the call itself
    when the writer is cancelled (a cut session), and fails when the call is cancelled (the
    timer)."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        call.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        await call.write(request)
        if expired:
            # The timer fired in the same turn as the write's completion: the call is cancelled
            # all the same, so the session must end as a timeout, not go on over a dead call.
            raise TimeoutError(f"no answer from the peer within {timeout_s} s")
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not expired or (task is not None and task.cancelling()):
            call.cancel()
            raise
        raise TimeoutError(f"no answer from the peer within {timeout_s} s") from None
    except Exception as exc:
        if expired:
            raise TimeoutError(f"no answer from the peer within {timeout_s} s") from exc
        raise
    finally:
        timer.cancel()


def _batch_bytes(m: Mutation) -> int:
    """What a mutation counts toward a batch's byte limit (its stored value, key and framing)."""
    return len(m.version.value) + len(m.key) + 128


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
