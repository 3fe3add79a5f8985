"""Backfill after the policy loosens: pull the records this region was refused before.

A source sends each write once, as it commits, and holds back what the target's region may not
hold then. When a new policy pack (or a wider namespace scope) later allows that region, the
held-back records are never sent again by the streams. The backfill job brings them: for every
peer that replicates a namespace to this node, it runs an anti-entropy comparison with the pull
(node.replication.entropy), paced by a token bucket to `rate_keys_s` key states per second.

Why anti-entropy and not a second pass of the streams: a comparison finds exactly the keys this
node lacks (or holds differently) among those its region may hold now, whatever the reason they
were missing, and its pull already has every check a transfer needs at both ends: the peer
decides and audits each version as a send to this region, this node runs the receiver's checks,
the erasure block and the policy again, audits each as a receive, seals under its own keys and
merges (an idempotent merge, so a record that also arrives by a stream or a round is harmless).
A stream pass would re-read whole change logs, have no idea what the target lacks, and the
source would have to know which of its past hold-backs the old policy made.

The peer decides by its own copy of the policy. A peer that has not adopted the revision that
changed the policy yet would withhold what is now allowed (or send what is now refused here),
so nothing is pulled from it until it answers from that revision or a later one (a peer that
does not say its revision, 0, is taken as it is). A peer that does not answer is tried
again with back-off. A newer change restarts the job over every pair still pending and the new
ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from domicile import errors
from domicile.topology import Topology
from node.metrics import NodeMetrics
from node.replication.entropy import AntiEntropy
from node.topology_view import TopologyView

log = logging.getLogger("domicile.replication.backfill")

# Between attempts of a pair whose peer is behind on the topology or did not answer.
RETRY_DELAY_S = 0.2
RETRY_DELAY_MAX_S = 5.0

Pair = tuple[str, str]  # (peer node id, namespace)


class TokenBucket:
    """At most `rate` units per second on average, in bursts of at most one second's worth.
    A take larger than the bucket is paid for by waiting (the balance goes negative), so a page
    of any size passes and the average still holds."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._tokens = rate
        self._at = clock()

    def debt_after(self, n: int) -> float:
        """Takes n units; the seconds to wait before using them."""
        now = self.clock()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        return max(0.0, -self._tokens / self.rate)

    async def take(self, n: int) -> None:
        wait = self.debt_after(n)
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass
class BackfillProgress:
    """What `domicile status` shows of the job."""

    state: str = "idle"  # idle (never ran), running, done
    topology_revision: int = 0  # the revision that started it
    policy_version: str = ""
    pairs_total: int = 0
    pairs_done: int = 0
    keys_pulled: int = 0  # key states the pull changed here
    keys_compared: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    pending: list[Pair] = field(default_factory=list)


def inbound_pairs(topology: Topology, node_id: str) -> set[Pair]:
    return {
        (link.source_node_id, ns)
        for link in topology.links
        if link.target_node_id == node_id
        for ns in link.namespaces
    }


def rescoped(before: Topology, after: Topology) -> set[str]:
    """Namespaces whose scope (the regions that may hold them) changed between two revisions."""
    old = {n.name: (n.is_global, tuple(sorted(n.regions))) for n in before.cluster.namespaces}
    return {
        n.name
        for n in after.cluster.namespaces
        if n.name in old and old[n.name] != (n.is_global, tuple(sorted(n.regions)))
    }


class Backfill:
    def __init__(
        self,
        *,
        node_id: str,
        entropy: AntiEntropy,
        view: TopologyView,
        metrics: NodeMetrics,
        rate_keys_s: float,
    ) -> None:
        self.node_id = node_id
        self.entropy = entropy
        self.view = view
        self.metrics = metrics
        self.bucket = TokenBucket(rate_keys_s)
        self.progress = BackfillProgress()
        self._task: asyncio.Task[None] | None = None
        metrics.backfill_rate.set(rate_keys_s)

    def topology_changed(self, before: Topology, policy_before: str) -> None:
        """Called after a revision is adopted. A new policy version may allow anything anywhere,
        so every pair is compared; a namespace whose scope changed, only its pairs. Links that
        appear because a node (re)registered are not a reason: their streams resume from the
        target's position, and nothing was held back on them."""
        if before.revision == 0:
            # The first topology from the coordinator after a fresh start: the streams send
            # the whole change log to a target that holds nothing yet.
            return
        pairs = inbound_pairs(self.view.topology, self.node_id)
        if self.view.policy.version == policy_before:
            widened = rescoped(before, self.view.topology)
            pairs = {(peer, ns) for peer, ns in pairs if ns in widened}
        if not pairs:
            return
        self.start(pairs | set(self.progress.pending))

    def start(self, pairs: set[Pair]) -> None:
        if self._task is not None:
            self._task.cancel()
        revision = self.view.revision
        self.progress = BackfillProgress(
            state="running",
            topology_revision=revision,
            policy_version=self.view.policy.version,
            pairs_total=len(pairs),
            started_at=time.time(),
            pending=sorted(pairs),
        )
        self.metrics.backfill_running.set(1)
        self.metrics.backfill_pairs_pending.set(len(pairs))
        log.info(
            "backfill for revision %d (policy %s): %d peer and namespace pairs",
            revision, self.progress.policy_version, len(pairs),
        )  # fmt: skip
        self._task = asyncio.create_task(self._run(self.progress), name="backfill")

    async def wait(self) -> None:
        """Until the job in progress ends (tests and shutdown)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def _run(self, progress: BackfillProgress) -> None:
        delay = RETRY_DELAY_S
        while progress.pending:
            still: list[Pair] = []
            for pair in progress.pending:
                if not await self._pair(pair, progress):
                    still.append(pair)
            progress.pending = still
            self.metrics.backfill_pairs_pending.set(len(still))
            if still:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_DELAY_MAX_S)
        progress.state = "done"
        progress.finished_at = time.time()
        self.metrics.backfill_running.set(0)
        log.info(
            "backfill for revision %d done: %d keys pulled from %d pairs",
            progress.topology_revision, progress.keys_pulled, progress.pairs_total,
        )  # fmt: skip

    async def _pair(self, pair: Pair, progress: BackfillProgress) -> bool:
        """One attempt at a pair; True when it is done (or no longer exists)."""
        peer_id, namespace = pair
        known = self.entropy.peers(self.view.topology).get(peer_id)
        if known is None or namespace not in known[1]:
            progress.pairs_done += 1  # the link is gone: nothing to pull from it
            return True
        try:
            comparison = await self.entropy.compare(
                known[0],
                namespace,
                repair=True,
                pace=self.bucket.take,
                min_peer_revision=progress.topology_revision,
            )
        except errors.DomicileError as exc:
            log.info("backfill from %s of %s: %s; trying again", peer_id, namespace, exc.message)
            return False
        except Exception:
            # Anything else (a transport error the comparison did not name) must not end the
            # job with its state left "running": the pair is tried again, like any failure.
            log.exception("backfill from %s of %s failed; trying again", peer_id, namespace)
            return False
        progress.keys_pulled += comparison.repaired
        progress.keys_compared += comparison.compared
        self.metrics.backfill_keys.labels(peer_id, namespace).inc(comparison.repaired)
        if 0 < comparison.peer_revision < progress.topology_revision:
            # The peer still decides by an older policy: nothing was pulled (what it sent could
            # be refused here, what it withholds may be allowed now). Again later.
            return False
        progress.pairs_done += 1
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
