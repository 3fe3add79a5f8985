"""The node's connection to the coordinator: register, heartbeat, watch the topology, and watch
the erasure orders and legal holds in force (a stream of their own, in pages).

The coordinator is the control plane only. While it is unreachable the node keeps serving and
replicating on its last topology (persisted, so a restart does too) and keeps retrying; when
it returns, the watch resumes from the node's revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

import grpc

from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.retry import Backoff, BackoffPolicy, retry_forever
from domicile.subjects import SubjectOrders
from domicile.topology import Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.wire.erased_subjects import ErasedListRead
from domicile.wire.subject_orders import OrdersGatherer
from domicile.wire.topology import topology_from_pb
from node.clock_guard import ClockGuard
from node.metrics import NodeMetrics
from node.topology_view import TopologyView

log = logging.getLogger("domicile.coordinator_link")

# Reads of the erased-subject list in one session before it gives up and registers again: a read
# is repeated only when an erasure completed behind its position, which takes all regions.
ERASED_LIST_READS_MAX = 5


class CoordinatorLink:
    def __init__(
        self,
        *,
        coordinator: str,
        dialer: Dialer,
        node_id: str,
        region: str,
        address: str,
        metrics_address: str,
        view: TopologyView,
        on_topology: Callable[[Topology, bytes], Awaitable[None]],
        metrics: NodeMetrics,
        backoff: BackoffPolicy,
        rpc_deadline_s: float,
        rng: random.Random | None = None,
        on_erased: Callable[[bytes, list[tuple[str, str]]], None] | None = None,
        epoch: int = 0,
        last_lsn: Callable[[], int] = lambda: 0,
        clock_guard: ClockGuard | None = None,
        on_orders: Callable[[SubjectOrders], Awaitable[None]] | None = None,
    ) -> None:
        self.epoch = epoch
        # Reported at registration and in every heartbeat: the coordinator remembers the highest,
        # and a store copied back from an older copy is found behind it (node.rewind).
        self.last_lsn = last_lsn
        # Every answer carries the coordinator's clock; the guard compares this node's with it.
        self.clock_guard = clock_guard
        # Called with every complete set of erasure orders and holds in force.
        self.on_orders = on_orders
        # Called with the cluster's permanent erasure list (its key and (subject hash, request
        # id) pairs) at every registration.
        self.on_erased = on_erased
        self.coordinator = coordinator
        self.dialer = dialer
        self.node_id = node_id
        self.region = region
        self.address = address
        self.metrics_address = metrics_address
        self.view = view
        self.on_topology = on_topology
        self.metrics = metrics
        self.backoff = backoff
        self.rpc_deadline_s = rpc_deadline_s
        self.rng = rng or random.Random()
        self.connected = False
        self.heartbeat_interval_s = 1.0

    async def run(self) -> None:
        # Retried within 2 s whatever the back-off: a node should notice the coordinator is back
        # soon after it is.
        await retry_forever(
            self._connected_session, Backoff(self.backoff, self.rng, cap_s=2.0), on_error=self._unreachable
        )

    async def _connected_session(self) -> None:
        try:
            await self._session()
        finally:
            self.connected = False
            self.metrics.coordinator_connected.set(0)

    def _unreachable(self, exc: Exception) -> None:
        detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
        log.info(
            "coordinator %s unreachable (%s); serving on topology revision %d",
            self.coordinator,
            detail,
            self.view.revision,
        )

    async def _session(self) -> None:
        async with self.dialer.channel(self.coordinator, ExpectedPeer.coordinator()) as channel:
            stub = cpb_grpc.CoordinatorServiceStub(channel)
            sent = time.monotonic()
            registered = await stub.RegisterNode(
                cpb.RegisterNodeRequest(
                    node_id=self.node_id,
                    region=self.region,
                    address=self.address,
                    metrics_address=self.metrics_address,
                    epoch=self.epoch,
                    last_lsn=self.last_lsn(),
                    lists_erased_subjects=True,
                ),
                timeout=self.rpc_deadline_s,
            )
            self._clock_sample(sent, registered.coordinator_unix_ms)
            # Also when nothing was ever erased (no key): a restored node waits for the list. It
            # is adopted only whole, before the session counts as connected.
            if self.on_erased is not None:
                self.on_erased(*await self._read_erased_list(stub, registered))
            if registered.heartbeat_interval_ms:
                self.heartbeat_interval_s = registered.heartbeat_interval_ms / 1000.0
            log.info(
                "registered with coordinator %s at revision %d",
                self.coordinator,
                registered.topology_revision,
            )
            self.connected = True
            self.metrics.coordinator_connected.set(1)
            tasks = [
                asyncio.create_task(self._heartbeats(stub), name="coordinator-heartbeats"),
                asyncio.create_task(self._watch_topology(stub), name="topology-watch"),
            ]
            if self.on_orders is not None:
                tasks.append(asyncio.create_task(self._watch_orders(stub), name="subject-orders-watch"))
            try:
                # The first of them to end (an error, or a stream the coordinator closed) ends the
                # session; run() reconnects.
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
                raise ConnectionError("a coordinator stream ended")
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _read_erased_list(
        self, stub: cpb_grpc.CoordinatorServiceStub, registered: cpb.RegisterNodeResponse
    ) -> tuple[bytes, list[tuple[str, str]]]:
        """The cluster's permanent erasure list, whole: its key and (subject hash, request id)
        pairs, read page by page (ListErasedSubjects), each page a call with its own deadline."""
        for _ in range(ERASED_LIST_READS_MAX):
            read = ErasedListRead()
            after = ""
            while True:
                try:
                    page = await stub.ListErasedSubjects(
                        cpb.ListErasedSubjectsRequest(after_request_id=after), timeout=self.rpc_deadline_s
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is grpc.StatusCode.UNIMPLEMENTED and not after:
                        # A coordinator that predates the RPC sent the list whole at registration.
                        erased = [(e.subject_hash, e.request_id) for e in registered.erased_subjects]
                        return bytes(registered.erased_subjects_key), erased
                    raise
                after = read.add(page)
                if not after:
                    break
            if read.whole():
                return read.key, read.entries()
            log.info("an erasure completed while the list of erased subjects was read; reading it again")
        raise ConnectionError(
            f"the list of erased subjects changed under each of {ERASED_LIST_READS_MAX} reads; "
            "registering again"
        )

    async def _watch_topology(self, stub: cpb_grpc.CoordinatorServiceStub) -> None:
        watch = stub.WatchTopology(
            cpb.WatchTopologyRequest(after_revision=self._resume_revision(), region=self.region)
        )
        async for message in watch:
            topology = topology_from_pb(message.topology)
            if topology.revision > self.view.revision or self.view.revision == 0:
                await self.on_topology(topology, message.topology.SerializeToString())

    async def _watch_orders(self, stub: cpb_grpc.CoordinatorServiceStub) -> None:
        assert self.on_orders is not None
        gatherer = OrdersGatherer()
        watch = stub.WatchSubjectOrders(
            cpb.WatchSubjectOrdersRequest(after_revision=self.view.orders.revision)
        )
        async for page in watch:
            orders = gatherer.add(page)
            if orders is not None:
                await self.on_orders(orders)

    def _resume_revision(self) -> int:
        # A topology built from local configuration has revision 0: ask for everything.
        return self.view.revision

    async def _heartbeats(self, stub: cpb_grpc.CoordinatorServiceStub) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            sent = time.monotonic()
            answer = await stub.Heartbeat(
                cpb.HeartbeatRequest(
                    node_id=self.node_id,
                    topology_revision=self.view.revision,
                    last_lsn=self.last_lsn(),
                    epoch=self.epoch,
                ),
                timeout=self.rpc_deadline_s,
            )
            self._clock_sample(sent, answer.coordinator_unix_ms)

    def _clock_sample(self, sent_monotonic_s: float, coordinator_unix_ms: int) -> None:
        if self.clock_guard is not None:
            self.clock_guard.sample(sent_monotonic_s, coordinator_unix_ms, time.monotonic())
