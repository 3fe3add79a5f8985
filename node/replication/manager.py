"""Runs one LinkSender per outbound link of the current topology, starting and stopping them as
the topology changes, and persists acknowledged positions periodically."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from domicile.identity.credentials import Dialer
from domicile.model import Limits
from domicile.retry import BackoffPolicy
from domicile.sync_modes import LinkCadence, link_cadence
from domicile.topology import Topology
from node.compliance.enforcer import Enforcer
from node.crypto.sealing import Sealer
from node.engine.base import StorageEngine
from node.engine.group_commit import GroupCommitter
from node.engine.log_tail import LogTail
from node.metrics import NodeMetrics
from node.offload import Offload
from node.replication.cadence import Cadence
from node.replication.encoded import EncodedLog
from node.replication.outbound import Bootstrap, LinkSender
from node.replication.signal import LogSignal
from node.topology_view import TopologyView

log = logging.getLogger("domicile.replication")


class ReplicationManager:
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
        metrics: NodeMetrics,
        limits: Limits,
        signal: LogSignal,
        backoff: BackoffPolicy,
        ack_persist_interval_s: float,
        dialer: Dialer,
        rng: random.Random | None = None,
        offload: Offload | None = None,
        log_tail: LogTail | None = None,
        epoch: int = 0,
        bootstrap: Bootstrap | None = None,
    ) -> None:
        self.epoch = epoch
        # Given to every sender: a target behind the truncated log is bootstrapped.
        self.bootstrap = bootstrap
        self.dialer = dialer
        self.node_id = node_id
        self.region = region
        self.engine = engine
        self.committer = committer
        self.view = view
        self.enforcer = enforcer
        self.sealer = sealer
        self.metrics = metrics
        self.limits = limits
        self.signal = signal
        self.backoff = backoff
        self.ack_persist_interval_s = ack_persist_interval_s
        self.rng = rng or random.Random()
        self.offload = offload or Offload()
        # Shared by every sender: the newest change-log entries, fed by the group committer.
        self.log_tail = log_tail
        # The links' shared wire messages: a record going to several regions is encoded once.
        self.encoded = EncodedLog()
        # Every target's acknowledged position as persisted (read at start, then kept up to
        # date here), so that starting a sender reads nothing on the event loop.
        self._stored_acks: dict[str, int] = {}
        self.senders: dict[str, LinkSender] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._persister: asyncio.Task[None] | None = None
        self._persisted: dict[str, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # Resolved (and dropped) on every ack while writes wait for regions: they look again.
        # A future, not an Event: a wait on it needs no task, and an ack with no waiter costs
        # nothing.
        self._acked: asyncio.Future[None] | None = None
        # Per target, per namespace its link carries: the log position up to which the link
        # may have passed entries of the namespace by (it did not carry it when it read them)
        # while its target acknowledged past them. regions_holding counts the target for the
        # namespace's entries after that position only.
        self._carried_after: dict[str, dict[str, int]] = {}

    async def start(self) -> None:
        self._stored_acks = await self.offload.run(self.engine.outbound_acks)
        self._persister = asyncio.create_task(self._persist_loop())
        self.apply(self.view.topology)

    def apply(self, topology: Topology) -> None:
        wanted = {}
        for link in topology.outbound(self.node_id):
            target = topology.node(link.target_node_id)
            if target is not None and link.namespaces:
                wanted[target.node_id] = (target, frozenset(link.namespaces))
        # Every entry up to here was read, or will be, before a namespace added now was
        # carried; the ones committed later are read with it.
        log_end = self._log_end()
        for target_id in list(self._carried_after):
            if target_id not in wanted:
                del self._carried_after[target_id]
        for target_id, (_, namespaces) in wanted.items():
            before = self._carried_after.get(target_id, {})
            self._carried_after[target_id] = {ns: before.get(ns, log_end) for ns in namespaces}
        for target_id in list(self.senders):
            sender = self.senders[target_id]
            spec = wanted.get(target_id)
            if spec is None or spec[0].address != sender.target.address:
                self._stop_sender(target_id)
                continue
            if spec[1] != sender.namespaces:
                sender.namespaces = spec[1]
            else:
                sender.target = spec[0]
            sender.cadence.replace(self._cadence_of(topology, spec[1], spec[0].region))
        for target_id, (target, namespaces) in wanted.items():
            if target_id not in self.senders:
                sender = LinkSender(
                    node_id=self.node_id,
                    region=self.region,
                    target=target,
                    dialer=self.dialer,
                    namespaces=namespaces,
                    engine=self.engine,
                    view=self.view,
                    enforcer=self.enforcer,
                    sealer=self.sealer,
                    metrics=self.metrics,
                    limits=self.limits,
                    signal=self.signal,
                    backoff=self.backoff,
                    acked_lsn=self._stored_acks.get(target_id, 0),
                    epoch=self.epoch,
                    rng=random.Random(self.rng.random()),
                    offload=self.offload,
                    log_tail=self.log_tail,
                    on_ack=self._pulse,
                    bootstrap=self.bootstrap,
                    encoded=self.encoded,
                    cadence=self._new_cadence(
                        target_id, self._cadence_of(topology, namespaces, target.region)
                    ),
                )
                self.senders[target_id] = sender
                self._tasks[target_id] = asyncio.create_task(
                    sender.run(), name=f"link-{self.node_id}-{target_id}"
                )
                log.info(
                    "link %s -> %s started for %s", self.node_id, target_id, ", ".join(sorted(namespaces))
                )

    @staticmethod
    def _cadence_of(topology: Topology, namespaces: frozenset[str], target_region: str) -> LinkCadence:
        specs = [ns.sync for ns in topology.cluster.namespaces if ns.name in namespaces]
        return link_cadence(specs, target_region)

    def _new_cadence(self, target_id: str, spec: LinkCadence) -> Cadence:
        labels = (self.node_id, target_id)
        allowance = self.metrics.replication_sync_allowance.labels(*labels)
        return Cadence(
            spec,
            on_drained=self.metrics.replication_drained.labels(*labels).set,
            on_change=lambda s: allowance.set(s.allowance_s(time.time())),
        )

    def _pulse(self) -> None:
        acked, self._acked = self._acked, None
        if acked is not None and not acked.done():
            acked.set_result(None)

    def link_acks(self) -> dict[str, int] | None:
        """Each outbound link's acknowledged position, by target; None while some link of the
        topology in force has no sender yet (change-log truncation then waits)."""
        acks = {}
        for link in self.view.topology.outbound(self.node_id):
            if not link.namespaces:
                continue
            sender = self.senders.get(link.target_node_id)
            if sender is None:
                return None
            acks[link.target_node_id] = sender.acked_lsn
        return acks

    def connected_links(self) -> frozenset[str]:
        """The targets whose link streams now (a session open past its bootstrap)."""
        return frozenset(target for target, sender in self.senders.items() if sender.connected)

    def opening_links(self) -> frozenset[str]:
        """The targets whose link has a session open that does not stream yet (the target
        answered, and is being bootstrapped)."""
        return frozenset(
            target for target, sender in self.senders.items() if sender.session_open and not sender.connected
        )

    def _log_end(self) -> int:
        """The last committed position of this node's change log (in memory when the tail
        knows it; a store read otherwise, only where no tail is kept)."""
        known = self.log_tail.last_lsn if self.log_tail is not None else None
        return known if known is not None else self.engine.last_lsn()

    def regions_holding(self, namespace: str, lsn: int) -> set[str]:
        """The regions that hold this node's change-log entry `lsn` durably: this one, and those
        of the targets that acknowledged it (a target acknowledges after its commit) on a link
        that carried the namespace when it read the entry. An acknowledgement is cumulative, so
        a link that took the namespace on later vouches only for its entries after that."""
        regions = {self.region}
        for target_id, sender in self.senders.items():
            if namespace not in sender.namespaces or sender.acked_lsn < lsn:
                continue
            carried_after = self._carried_after.get(target_id, {}).get(namespace)
            if carried_after is not None and lsn > carried_after:
                regions.add(sender.target.region)
        return regions

    async def wait_regions(self, namespace: str, lsn: int, needed: int, timeout_s: float) -> int:
        """Waits until `needed` regions hold the entry, at most timeout_s; returns how many do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            holding = len(self.regions_holding(namespace, lsn))
            remaining = deadline - loop.time()
            if holding >= needed or remaining <= 0:
                return holding
            # Wakes on the next ack of any link (shared by every waiting write: never cancelled).
            if self._acked is None or self._acked.done():
                self._acked = loop.create_future()
            await asyncio.wait({self._acked}, timeout=remaining)

    def _stop_sender(self, target_id: str) -> None:
        sender = self.senders.pop(target_id, None)
        task = self._tasks.pop(target_id, None)
        if task is not None:
            task.cancel()
        if sender is not None:
            self._closing.add(asyncio.create_task(self._close_later(sender, task)))
        log.info("link %s -> %s stopped", self.node_id, target_id)

    async def _close_later(self, sender: LinkSender, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            await asyncio.wait({task}, timeout=3.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender.close(), 2.0)
        target_id = sender.target.node_id
        if target_id not in self.senders:
            # The link is gone (not replaced by a new sender for the same target): its gauges
            # go with it, or they would keep their last values (a link "disconnected") for good.
            self.metrics.forget_peer(target_id, labels=("target",))

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ack_persist_interval_s)
            await self.persist_acks()

    async def persist_acks(self) -> None:
        changed = {t: s.acked_lsn for t, s in self.senders.items() if s.acked_lsn > self._persisted.get(t, 0)}
        if not changed:
            return

        def work(engine: StorageEngine) -> None:
            for target, lsn in changed.items():
                engine.record_outbound_ack(target, lsn)

        await self.committer.run(work)
        self._persisted.update(changed)
        for target, lsn in changed.items():
            self._stored_acks[target] = max(self._stored_acks.get(target, 0), lsn)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        if self._persister is not None:
            tasks.append(self._persister)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=3.0)
            for task in pending:
                log.warning("replication task %s did not stop within 3 s", task.get_name())
        self._tasks.clear()
        for sender in self.senders.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sender.close(), 2.0)
        if self._closing:
            await asyncio.wait(self._closing, timeout=3.0)
        with contextlib.suppress(Exception):
            await self.persist_acks()
        self.senders.clear()
