"""Anti-entropy: two replicas of a namespace compare digest trees and exchange the keys that
differ. It repairs what the change log cannot: writes a node shipped after the point its store
was restored from, and writes that reached only some replicas before their origin went away.

A round is a pull. This node asks a peer that replicates the namespace to it for the peer's
tree (node.replication.digest_tree), compares roots, then buckets, then the key digests of the
buckets that differ, and fetches the peer's state of every key whose digest differs. The peer
answers only with what this node's region may hold (each version decided and audited as a send,
as a stream's source does); this node merges what arrives through the receiver's checks, the
policy again, the erasure block, sealing and the same version-vector merge a stream uses
(node.replication.inbound Receiver.apply_repair). Keys only this node holds go the other way in
the peer's own round. Only nodes may call the peer's side, and only nodes it replicates the
namespace to.

The same comparison without the pull is the consistency check: the keys on which two replicas
disagree, and the share on which they agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from domicile import errors
from domicile.causality import KeyState, Mutation, context_without
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Principal, PrincipalKind
from domicile.policy import Action, RecordFacts
from domicile.topology import NodeHealth, NodeInfo, Topology
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from domicile.wire.limits import NODE_MESSAGE_BYTES_MAX
from domicile.wire.records import mutation_to_pb
from node.compliance.enforcer import Audit, Enforcer
from node.crypto.sealing import Sealer
from node.engine.base import StorageEngine
from node.metrics import NodeMetrics
from node.offload import Offload
from node.replication.digest_tree import BUCKETS, DigestTrees, Leaf, TreeView
from node.replication.inbound import Receiver
from node.topology_view import TopologyView

log = logging.getLogger("domicile.replication.entropy")

# Per call: buckets whose key digests one EntropyKeys answers, keys one EntropyStates answers.
KEYS_BUCKETS_MAX = 64
STATES_KEYS_MAX = 500
# An EntropyStates answer stops adding keys past this many value bytes (under the 4 MiB limit).
STATES_BYTES_MAX = 3 * 1024 * 1024
# Rounds asked for at once (rounds_now) that fail are tried again this often, this many times,
# before the node falls back to its regular interval.
URGENT_RETRY_S = 2.0
# How often the digest trees take the local commits from the in-memory log tail (follow_tail).
# The tail holds the last 10,000 entries by default, so a node writing fewer than that a second
# keeps its trees within it.
FOLLOW_EVERY_S = 1.0
# Following the tail, the trees also recompute the marked keys once this many are marked: a
# round's (or a peer's EntropyDigests') paced refresh then has at most about this many to do,
# about 1.5 s at a third of a core, well inside the caller's 5 s deadline. Fewer wait for the
# round, so that a key written many times between rounds is recomputed once.
REFRESH_AHEAD_KEYS = 10_000
# A refresh of the trees recomputes this many marked keys per step (about 13 ms of interpreter at
# 50 us a key), then leaves the interpreter to the node's own work for REFRESH_PAUSE_RATIO times
# as long as the step took: a large refresh (a batch load's keys) takes a third of a core while
# it lasts, instead of holding the interpreter for seconds while the node's calls pile up.
REFRESH_STEP_KEYS = 256
REFRESH_PAUSE_RATIO = 2.0
URGENT_RETRIES = 15
DIVERGENT_KEYS_MAX_DEFAULT = 100
DIVERGENT_KEYS_MAX = 10_000
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", NODE_MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", NODE_MESSAGE_BYTES_MAX),
]


@dataclass
class Comparison:
    """How this node's replica of a namespace and a peer's compare."""

    namespace: str
    peer_node_id: str
    keys: int = 0  # keys either holds that both may hold
    divergent: list[str] = field(default_factory=list)  # sorted
    compared: int = 0  # keys of differing buckets whose digests were compared
    repaired: int = 0  # keys whose state changed here
    refused: int = 0  # versions this node's checks or policy refused
    divergent_total: int = 0  # all divergent keys (`divergent` may list only the first ones)
    # The topology revision the peer decided by (0 from a peer that does not say): a backfill
    # (node.replication.backfill) trusts a comparison only once the peer is on its policy.
    peer_revision: int = 0

    @property
    def agreement(self) -> float:
        return 1.0 if self.keys == 0 else (self.keys - self.divergent_total) / self.keys


# Awaited with a page's key count before the page is pulled (a backfill's rate limit).
Pace = Callable[[int], Awaitable[None]]


def decide_send(
    enforcer: Enforcer,
    node_id: str,
    target: NodeInfo,
    key: str,
    m: Mutation,
    via: str,
    entries: list[asyncio.Future[int]],
) -> bool:
    """The policy decision, at this end, on sending one version of a key state to `target`
    (an anti-entropy answer or a bootstrap part), audited as a send: its entry, if any, is
    appended to `entries` for the caller to make durable before anything is sent."""
    v = m.version
    facts = RecordFacts(m.namespace, v.classification, v.subject_id, v.subject_jurisdiction)
    dot = m.version.dot
    decision, entry = enforcer.decide(
        facts,
        Action.REPLICATE,
        audit_action=Audit.REPLICATE_SEND,
        principal=f"node:{node_id}",
        key=key,
        region=target.region,
        detail=f"to={target.node_id} {via} dot={dot.node_id}:{dot.counter}",
    )
    if entry is not None:
        entries.append(entry)
    return decision.allowed


def state_mutations(namespace: str, key: str, state: KeyState) -> list[Mutation]:
    """A key state as mutations, one per version (see context_without). The twins of a version
    the state holds (the same request written on another node, domicile.causality.apply) stay
    out of the context too: a context covering one supersedes the held version wherever the
    request is remembered (causality._supersedes), so a receiver applying a sibling's mutation
    first dropped the held version, and then ignored its own mutation as already seen."""
    held = [v.dot for v in state.versions]
    marks = (state.request(v.request_id) for v in state.versions if v.request_id)
    twins = [d for mark in marks if mark is not None for d in mark.dots]
    context = context_without(state.context, [*held, *twins])
    return [Mutation(namespace, key, context, v, lsn=0, origin_node_id=v.dot.node_id) for v in state.versions]


class AntiEntropy:
    def __init__(
        self,
        *,
        node_id: str,
        region: str,
        engine: StorageEngine,
        trees: DigestTrees,
        receiver: Receiver,
        view: TopologyView,
        enforcer: Enforcer,
        sealer: Sealer,
        dialer: Dialer,
        metrics: NodeMetrics,
        offload: Offload,
        long_work: Offload,
        rpc_deadline_s: float,
        interval_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.region = region
        self.engine = engine
        self.trees = trees
        self.receiver = receiver
        self.view = view
        self.enforcer = enforcer
        self.sealer = sealer
        self.dialer = dialer
        self.metrics = metrics
        self.offload = offload
        # The trees' work (a rebuild reads the whole store) runs in the long-jobs pool, so that
        # it never holds up a Get; the tree's lock serialises it.
        self.long_work = long_work
        self.rpc_deadline_s = rpc_deadline_s
        self.interval_s = interval_s
        self.rng = rng or random.Random()
        # The peers whose gauges this node exports (forgotten once they are peers no more).
        self._metered_peers: set[str] = set()
        # Per peer: the address and the dialer's credentials its channel was made with.
        self._channels: dict[str, tuple[str, object, grpc.aio.Channel]] = {}
        # One round per peer at a time.
        self._round_locks: dict[str, asyncio.Lock] = {}
        # Set to run the next rounds now rather than at the interval (rounds_now).
        self._urgent = asyncio.Event()
        self._urgent_retries = 0

    # -- the trees ---------------------------------------------------------------------------

    async def refresh(self) -> None:
        await refresh_paced(self.trees, self.engine, self.long_work)

    async def follow(self, through: int) -> None:
        """Before the change log is truncated up to `through`: the trees take note of what
        they have not read of it yet (DigestTrees.follow)."""
        await self.long_work.run(self.trees.follow, self.engine, through)

    async def follow_tail(self, every_s: float = FOLLOW_EVERY_S) -> None:
        """Runs until cancelled: see the module function follow_tail."""
        await follow_tail(self.trees, self.follow, every_s, self.refresh)

    def may_hold(self, facts: Sequence[RecordFacts], region: str) -> bool:
        """Whether every version of a key may be held at region (asked, not audited: nothing
        moves on this answer)."""
        policy = self.view.policy
        return all(policy.decide(f, region, Action.REPLICATE).allowed for f in facts)

    # -- the called side ---------------------------------------------------------------------

    def check_caller(
        self, principal: Principal | None, caller_node_id: str, namespace: str
    ) -> NodeInfo | str:
        """The caller must be the node it names (by its certificate) and one this node
        replicates the namespace to. Returns it, or what is wrong."""
        if principal is not None and (
            principal.kind is not PrincipalKind.NODE or principal.node_id != caller_node_id
        ):
            return (
                f"peer {principal.uri} may not compare replicas as node {caller_node_id!r}: only "
                "the node its certificate names"
            )
        topology = self.view.topology
        caller = topology.node(caller_node_id)
        linked = any(
            li.source_node_id == self.node_id
            and li.target_node_id == caller_node_id
            and namespace in li.namespaces
            for li in topology.links
        )
        if caller is not None and principal is not None and principal.region != caller.region:
            # The same node id under another region's certificate is another party: the
            # policy's answers below are for the region the topology names.
            return (
                f"peer {principal.uri} is of region {principal.region!r}, but node {caller_node_id!r} "
                f"is in region {caller.region!r}; only the node its certificate names, in its region"
            )
        if caller is None or not linked:
            return (
                f"node {caller_node_id!r} holds no replication link from {self.node_id} for namespace "
                f"{namespace!r} in topology revision {topology.revision}; only replicas in the "
                "namespace's scope compare"
            )
        return caller

    async def digests(self, namespace: str) -> TreeView:
        await self.refresh()
        return await self.long_work.run(self.trees.tree, namespace)

    async def key_digests(
        self, namespace: str, buckets: Sequence[int], region: str
    ) -> tuple[list[Leaf], int]:
        """The key digests of the buckets that region may hold, and how many were left out."""
        if len(buckets) > KEYS_BUCKETS_MAX:
            raise errors.InvalidArgument(f"{len(buckets)} buckets asked; at most {KEYS_BUCKETS_MAX} per call")
        bad = [b for b in buckets if not 0 <= b < BUCKETS]
        if bad:
            raise errors.InvalidArgument(f"bucket {bad[0]} is out of range; buckets are 0 to {BUCKETS - 1}")
        leaves = await self.long_work.run(self.trees.leaves, namespace, buckets)
        allowed = [leaf for leaf in leaves if self.may_hold(leaf.facts, region)]
        return allowed, len(leaves) - len(allowed)

    async def states(
        self, namespace: str, keys: Sequence[str], caller: NodeInfo
    ) -> rpb.EntropyStatesResponse:
        """The keys' states as mutations, each version decided and audited as a send to the
        caller's region, values opened (the caller seals them under its own keys)."""
        if len(keys) > STATES_KEYS_MAX:
            raise errors.InvalidArgument(f"{len(keys)} keys asked; at most {STATES_KEYS_MAX} per call")
        found = await self.offload.run(self.engine.get_many, namespace, list(keys))
        response = rpb.EntropyStatesResponse()
        entries: list[asyncio.Future[int]] = []
        wanted: list[Mutation] = []
        answered = 0
        size = 0
        for key in keys:
            state = found.get(key)
            if state is not None:
                # Measured before anything is decided, so that a key left for the next call
                # is not audited as sent. One key always goes, whatever its size (a message
                # holds several values of the largest size, as a Get's siblings do).
                key_bytes = sum(len(v.value) for v in state.versions)
                if answered and size + key_bytes > STATES_BYTES_MAX:
                    break
                size += key_bytes
            answered += 1
            if state is None:
                continue
            for m in state_mutations(namespace, key, state):
                if decide_send(self.enforcer, self.node_id, caller, key, m, "antientropy", entries):
                    wanted.append(m)
                else:
                    response.withheld_count += 1
        opened = await self.offload.run(self._open, wanted)
        for sent in opened:
            if sent is None:
                response.withheld_count += 1  # erased: its key was destroyed
            else:
                mutation_to_pb(sent, response.mutations.add())
        response.keys_answered = answered
        # The trail says what left before it leaves.
        if entries:
            await asyncio.gather(*entries)
        return response

    def _open(self, mutations: list[Mutation]) -> list[Mutation | None]:
        out: list[Mutation | None] = []
        for m in mutations:
            version = self.sealer.open_version(m.namespace, m.key, m.version)
            out.append(
                None
                if version is None
                else Mutation(m.namespace, m.key, m.context, version, 0, m.origin_node_id)
            )
        return out

    # -- the calling side --------------------------------------------------------------------

    def _stub(self, peer: NodeInfo) -> rpb_grpc.ReplicationServiceStub:
        # A channel's connections present the certificate it was made with: one is made again
        # when the address changes, or the dialer's files did (a certificate renewed in place,
        # which the peer would refuse once the old one expired).
        credentials = self.dialer.credentials()
        known = self._channels.get(peer.node_id)
        if known is None or known[0] != peer.address or known[1] is not credentials:
            expected = ExpectedPeer.node(peer.region, peer.node_id)
            channel = self.dialer.channel(peer.address, expected, options=CHANNEL_OPTIONS)
            if known is not None:
                asyncio.get_running_loop().create_task(known[2].close())
            self._channels[peer.node_id] = (peer.address, credentials, channel)
            known = self._channels[peer.node_id]
        return rpb_grpc.ReplicationServiceStub(known[2])

    def _forget_channel(self, peer_id: str) -> None:
        known = self._channels.pop(peer_id, None)
        if known is not None:
            asyncio.get_running_loop().create_task(known[2].close())

    def peers(self, topology: Topology) -> dict[str, tuple[NodeInfo, tuple[str, ...]]]:
        """Every node that replicates some namespace to this one, with those namespaces."""
        out: dict[str, tuple[NodeInfo, tuple[str, ...]]] = {}
        for link in topology.links:
            if link.target_node_id != self.node_id or not link.namespaces:
                continue
            node = topology.node(link.source_node_id)
            if node is not None:
                out[node.node_id] = (node, tuple(link.namespaces))
        return out

    async def compare(
        self,
        peer: NodeInfo,
        namespace: str,
        *,
        repair: bool,
        divergent_max: int = DIVERGENT_KEYS_MAX,
        pace: Pace | None = None,
        min_peer_revision: int = 0,
    ) -> Comparison:
        """Compares this node's replica of the namespace with the peer's; with `repair`, pulls
        and merges the peer's state of every key that differs (`pace`, if given, is awaited
        with each page's key count before the page is asked for: a backfill's rate limit). A
        failed call to the peer is Unavailable (it may answer later) or FailedPrecondition (it
        refused), naming the peer. A peer on a topology revision below `min_peer_revision` (it
        decides by an older policy) is compared with no further call: the result says its
        revision."""
        try:
            return await self._compare(
                peer,
                namespace,
                repair=repair,
                divergent_max=divergent_max,
                pace=pace,
                min_peer_revision=min_peer_revision,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNAUTHENTICATED:
                # The channel's connection may carry a certificate since renewed on disk (it is
                # read when a connection is made): the next round dials again.
                self._forget_channel(peer.node_id)
            what = f"peer {peer.node_id} answered {code.name}: {exc.details()}"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise errors.Unavailable(f"{what}; the comparison of {namespace} can be retried") from None
            raise errors.FailedPrecondition(f"{what}; {namespace} was not compared") from None

    async def _compare(
        self,
        peer: NodeInfo,
        namespace: str,
        *,
        repair: bool,
        divergent_max: int,
        pace: Pace | None,
        min_peer_revision: int,
    ) -> Comparison:
        stub = self._stub(peer)
        deadline = self.rpc_deadline_s
        result = Comparison(namespace, peer.node_id)
        await self.refresh()
        own = await self.long_work.run(self.trees.tree, namespace)
        theirs = await stub.EntropyDigests(
            rpb.EntropyDigestsRequest(namespace=namespace, caller_node_id=self.node_id), timeout=deadline
        )
        if len(theirs.buckets) != BUCKETS:
            raise errors.Unavailable(
                f"peer {peer.node_id} answered {len(theirs.buckets)} bucket digests; this node uses {BUCKETS}"
            )
        result.peer_revision = theirs.topology_revision
        if 0 < theirs.topology_revision < min_peer_revision:
            return result
        differing = [b for b in range(BUCKETS) if bytes(theirs.buckets[b]) != own.buckets[b]]
        if theirs.root == own.root:
            differing = []
        # Keys of equal buckets are the same on both sides.
        result.keys = sum(own.counts[b] for b in range(BUCKETS)) - sum(own.counts[b] for b in differing)
        divergent: list[str] = []
        to_pull: list[str] = []
        for i in range(0, len(differing), KEYS_BUCKETS_MAX):
            chunk = differing[i : i + KEYS_BUCKETS_MAX]
            answer = await stub.EntropyKeys(
                rpb.EntropyKeysRequest(namespace=namespace, caller_node_id=self.node_id, buckets=chunk),
                timeout=deadline,
            )
            peer_leaves = {k.key: bytes(k.digest) for k in answer.keys}
            own_leaves = await self.long_work.run(self.trees.leaves, namespace, chunk)
            mine = {leaf.key: leaf.digest for leaf in own_leaves if self.may_hold(leaf.facts, peer.region)}
            union = set(mine) | set(peer_leaves)
            result.keys += len(union)
            result.compared += len(union)
            for key in union:
                if mine.get(key) != peer_leaves.get(key):
                    divergent.append(key)
                    if key in peer_leaves:
                        to_pull.append(key)
        divergent.sort()
        result.divergent = divergent
        result.divergent_total = len(divergent)
        labels = (self.node_id, peer.node_id, namespace)
        self.metrics.consistency_keys.labels(*labels).set(result.keys)
        self.metrics.consistency_divergent.labels(*labels).set(len(divergent))
        self.metrics.consistency_agreement.labels(*labels).set(result.agreement)
        if repair:
            self.metrics.entropy_keys_compared.labels(*labels).inc(result.compared)
            await self._pull(stub, peer, namespace, sorted(to_pull), result, pace)
            self.metrics.entropy_keys_repaired.labels(*labels).inc(result.repaired)
        del result.divergent[divergent_max:]
        return result

    async def _pull(
        self,
        stub: rpb_grpc.ReplicationServiceStub,
        peer: NodeInfo,
        namespace: str,
        keys: list[str],
        result: Comparison,
        pace: Pace | None = None,
    ) -> None:
        """Pulls the keys' states in pages and merges them; the next page is fetched while the
        previous one is checked and committed (two pages in memory at most)."""

        async def fetch(ask: list[str]) -> tuple[list[str], rpb.EntropyStatesResponse]:
            if pace is not None:
                await pace(len(ask))
            answer = await stub.EntropyStates(
                rpb.EntropyStatesRequest(namespace=namespace, caller_node_id=self.node_id, keys=ask),
                timeout=self.rpc_deadline_s,
            )
            if answer.keys_answered < 1 or answer.keys_answered > len(ask):
                raise errors.Unavailable(
                    f"peer {peer.node_id} answered {answer.keys_answered} of {len(ask)} keys; "
                    "an answer covers at least one"
                )
            return ask, answer

        pending = keys
        page: asyncio.Task[tuple[list[str], rpb.EntropyStatesResponse]] | None = (
            asyncio.create_task(fetch(pending[:STATES_KEYS_MAX])) if pending else None
        )
        try:
            while page is not None:
                ask, answer = await page
                pending = pending[answer.keys_answered :]
                page = asyncio.create_task(fetch(pending[:STATES_KEYS_MAX])) if pending else None
                # Only mutations of the namespace and the keys asked for: a peer cannot push others.
                asked = set(ask[: answer.keys_answered])
                messages = [m for m in answer.mutations if m.namespace == namespace and m.key in asked]
                result.refused += len(answer.mutations) - len(messages)
                if messages:
                    repaired = await self.receiver.apply_repair(peer.node_id, messages)
                    result.repaired += len(repaired.repaired)
                    result.refused += repaired.refused
        finally:
            if page is not None and not page.done():
                page.cancel()
                with contextlib.suppress(BaseException):
                    await page

    async def round_with(self, peer_node_id: str) -> list[Comparison]:
        """One anti-entropy round with a peer: every namespace it replicates to this node."""
        known = self.peers(self.view.topology).get(peer_node_id)
        if known is None:
            raise errors.FailedPrecondition(
                f"node {peer_node_id!r} replicates no namespace to {self.node_id}; rounds run only "
                "between replicas in a namespace's scope"
            )
        peer, namespaces = known
        lock = self._round_locks.setdefault(peer_node_id, asyncio.Lock())
        async with lock:
            try:
                out = [await self.compare(peer, ns, repair=True) for ns in namespaces]
            except Exception:
                self.metrics.entropy_rounds.labels(self.node_id, peer_node_id, "failed").inc()
                raise
        self.metrics.entropy_rounds.labels(self.node_id, peer_node_id, "ok").inc()
        self.metrics.entropy_last_round.labels(self.node_id, peer_node_id).set(time.time())
        repaired = sum(c.repaired for c in out)
        if repaired:
            log.info("anti-entropy with %s repaired %d keys", peer_node_id, repaired)
        return out

    async def check(
        self, peer_node_id: str, namespaces: Sequence[str], divergent_max: int
    ) -> list[Comparison]:
        """The consistency check with one peer: compares, moves nothing."""
        topology = self.view.topology
        known = self.peers(topology).get(peer_node_id)
        if known is None:
            raise errors.FailedPrecondition(
                f"node {peer_node_id!r} replicates no namespace to {self.node_id}; only replicas in a "
                "namespace's scope compare"
            )
        peer, linked = known
        for ns in namespaces:
            if ns not in linked:
                raise errors.FailedPrecondition(
                    f"nodes {self.node_id} and {peer_node_id} do not both hold namespace {ns!r}; "
                    f"they share {', '.join(linked) or 'none'}"
                )
        wanted = [ns for ns in linked if not namespaces or ns in namespaces]
        return [await self.compare(peer, ns, repair=False, divergent_max=divergent_max) for ns in wanted]

    # -- the loop ----------------------------------------------------------------------------

    def rounds_now(self, reason: str) -> None:
        """Runs a round with every peer now, not at the next interval, and retries the peers
        whose round fails every URGENT_RETRY_S for a while. Called when writes this node lacks
        may be held only by some of its peers: their origin went down (the relay of a dead
        origin's writes), or this node's store was found rewound."""
        if self.interval_s <= 0:
            return
        log.info("anti-entropy rounds now: %s", reason)
        self._urgent_retries = URGENT_RETRIES
        self._urgent.set()

    async def run(self) -> None:
        """Builds the trees, then every interval (or at once, see rounds_now) runs a round with
        each peer. Neither a build nor a round that fails ends the loop: it runs for the life
        of the process, and nothing starts it again."""
        failed = await self._build_trees()
        if self.interval_s <= 0:
            return
        if failed and self._urgent_retries > 0:
            # Rounds asked for at once wait for the store as after a failed round, rather than
            # run straight into the same error.
            self._urgent.clear()
            self._retry_soon()
        while True:
            # Jittered, so that the nodes of a cluster do not all compare at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), self.interval_s * (0.5 + self.rng.random()))
            self._urgent.clear()
            failed = await self._round_with_every_peer()
            if failed and self._urgent_retries > 0:
                self._retry_soon()
            else:
                self._urgent_retries = 0

    def _retry_soon(self) -> None:
        self._urgent_retries -= 1
        asyncio.get_running_loop().call_later(URGENT_RETRY_S, self._urgent.set)

    async def _build_trees(self) -> int:
        """The first refresh, which builds the trees from the whole store. A store error then (a
        MongoDB election at start, a rebuild cut short) used to end the task, and with it every
        round in this process, the urgent ones after a rewind included. Now it is logged and
        counted as a failed round with each peer (none can run without the trees), and the trees
        stay stale: each round refreshes them first, so the next one builds them. Returns how
        many of those peers the coordinator has up, as _round_with_every_peer does."""
        try:
            await self.refresh()
        except errors.DomicileError as exc:
            log.warning("anti-entropy could not build the digest trees: %s", exc.message)
        except Exception:
            log.exception("anti-entropy could not build the digest trees")
        else:
            return 0
        failed = 0
        for peer_id, (peer, _namespaces) in self.peers(self.view.topology).items():
            self.metrics.entropy_rounds.labels(self.node_id, peer_id, "failed").inc()
            failed += peer.health is NodeHealth.UP
        return failed

    async def _round_with_every_peer(self) -> int:
        """One round with each peer; returns how many of those the coordinator has up failed
        (one that is down is expected to fail, and retrying it soon helps nobody)."""
        failed = 0
        peers = self.peers(self.view.topology)
        for gone in self._metered_peers - peers.keys():
            # No longer a peer (removed, or no namespace links it here): its last round's time
            # and agreement would stay as they were, and the stale alert fire for good.
            self.metrics.forget_peer(gone, labels=("peer",))
        self._metered_peers = set(peers)
        for peer_id, (peer, _namespaces) in sorted(peers.items()):
            try:
                await self.round_with(peer_id)
            except errors.DomicileError as exc:
                failed += peer.health is NodeHealth.UP
                log.info("anti-entropy with %s failed: %s", peer_id, exc.message)
            except Exception:
                # A bug must not end the rounds for good (the stale alert would be the
                # only sign): logged with its trace, and the next peer's round goes on.
                failed += peer.health is NodeHealth.UP
                log.exception("anti-entropy with %s failed unexpectedly", peer_id)
        return failed

    async def close(self) -> None:
        channels = [c for _, _, c in self._channels.values()]
        self._channels.clear()
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()


async def refresh_paced(trees: DigestTrees, engine: StorageEngine, offload: Offload) -> None:
    """Brings the trees up to date in paced steps (REFRESH_STEP_KEYS, REFRESH_PAUSE_RATIO): the
    keys marked when it starts, and those marked meanwhile as long as twice as many steps allow,
    so that a node written faster than it refreshes still ends each refresh (what is left waits
    for the next). Cancelled between steps, it leaves the keys it did not reach marked."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    left = await offload.run(trees.refresh_step, engine, REFRESH_STEP_KEYS)
    steps = 2 * -(-left // REFRESH_STEP_KEYS)
    while left and steps > 0:
        steps -= 1
        await asyncio.sleep((loop.time() - started) * REFRESH_PAUSE_RATIO)
        started = loop.time()
        left = await offload.run(trees.refresh_step, engine, REFRESH_STEP_KEYS)


async def follow_tail(
    trees: DigestTrees,
    follow: Callable[[int], Awaitable[None]],
    every_s: float = FOLLOW_EVERY_S,
    refresh: Callable[[], Awaitable[None]] | None = None,
    refresh_ahead_keys: int = REFRESH_AHEAD_KEYS,
) -> None:
    """Every every_s, until cancelled: the trees mark the keys of the local commits past their
    position, up to the last one the in-memory log tail has seen (`follow`, DigestTrees.follow
    off the event loop), so that they stay within the tail. Without it they read the log only
    when the truncator was about to delete it (every few seconds): at thousands of writes a
    second that was tens of thousands of entries, most already out of the tail, decoded from the
    store at once, holding the interpreter long enough to stall the event loop (replication lag
    p99 from about 30 to over 200 ms at 5,000 records/s).

    With `refresh` (AntiEntropy.refresh, paced), the keys marked meanwhile (by the commits
    followed, and by replicated applies) are recomputed too once refresh_ahead_keys are marked:
    left to the next anti-entropy round, a busy node's were a minute's writes, whose paced
    refresh took long enough for a peer's EntropyDigests call (which refreshes first) to run out
    of time. The same work as at the round, done earlier; fewer keys wait for the round, where
    a key written many times is recomputed once."""
    tail = trees.log_tail
    if tail is None:
        return
    while True:
        await asyncio.sleep(every_s)
        last = tail.last_lsn
        try:
            if last is not None and last > trees.log_position:
                await follow(last)
            if refresh is not None and trees.dirty_count >= refresh_ahead_keys:
                await refresh()
        except Exception:
            # The truncator follows the log again before it deletes any of it; a refresh that
            # finds it gone rebuilds, and marked keys stay marked for the next one. Nothing is
            # lost here, so the loop goes on.
            log.exception("the digest trees could not follow the change log's tail")
