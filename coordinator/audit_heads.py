"""The coordinator's record of every node's signed audit head.

A node's audit log lives in its region; its signed heads live here, out of the region's
control. A region usually has one node; several daemons of a region over one database each keep
an audit chain of their own, so heads are kept per node. A head is accepted only when it is
signed with the key the exporting node's certificate binds (domicile/identity/audit_key.py):
the CA, not the first caller, decides a node's key. The first head of a node pins its region and
public key. After that a head is accepted only when it is validly signed by that key and extends
what is on record: a smaller size means the log was truncated, the same size with another hash
means it was rewritten. A longer head is taken only with the exporter's proof that its log
extends the one on record: the chain hash of its own entry at the recorded size, which must be
the recorded head's. (Two heads alone cannot show that; without the proof, a log put back from
an older copy that grew again past the recorded size would replace the head that proves its
lost entries, and `domicile audit verify` would then find nothing wrong.)

A node that became a new incarnation (its store restored from a backup, or found put back from
an older copy at start: node/rewind.py) starts a new chain: the head of its previous
incarnation is closed (kept for good, with the time the new chain began) and the new one is
taken as a first head, its key still the one on record (on an insecure port, where nothing binds
the key and the restored data directory has a new one, the new chain's first head pins its
key, as the first chain's did). A head from an older incarnation than the one on record is
refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from domicile.audit import ClosedChain, SignedHead
from domicile.cluster import ClusterSpec
from domicile.errors import FailedPrecondition, InvalidArgument, NotFound
from domicile.wire.audit import head_from_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyBinding:
    """The audit-head key the certificate of the exporting node binds (b"": it binds none)."""

    key: bytes


@dataclass(frozen=True)
class AcceptedHead:
    head: SignedHead
    accepted_unix_ms: int
    # The exporting node's incarnation (0 until its store was first restored or found rewound).
    incarnation: int = 0


def stored_heads(rows: dict[str, tuple[bytes, int, int]]) -> dict[str, AcceptedHead]:
    """The accepted heads as the coordinator's store keeps them (serialized, with their time and
    incarnation), by node id. Stores written when heads were kept per region have rows keyed by
    region: each is re-keyed by the node it names, and of two rows of one node the later
    incarnation, then the longer log, wins."""
    heads: dict[str, AcceptedHead] = {}
    for raw, ms, incarnation in rows.values():
        accepted = AcceptedHead(head_from_bytes(raw), ms, incarnation)
        node_id = accepted.head.node_id
        held = heads.get(node_id)
        if held is None or (held.incarnation, held.head.size) < (incarnation, accepted.head.size):
            heads[node_id] = accepted
    return heads


def stored_closed_chains(rows: list[tuple[str, int, bytes, int, int]]) -> list[ClosedChain]:
    """The closed chains as the coordinator's store keeps them ((node id, incarnation, head,
    accepted, closed) rows, oldest first)."""
    return [
        ClosedChain(head_from_bytes(raw), inc, accepted, closed) for _, inc, raw, accepted, closed in rows
    ]


class AuditHeadBook:
    def __init__(
        self,
        cluster: ClusterSpec,
        stored: dict[str, AcceptedHead],
        save: Callable[[AcceptedHead, bool], None],
        now_ms: Callable[[], int],
        on_accept: Callable[[AcceptedHead], None] = lambda h: None,
        on_close: Callable[[AcceptedHead, AcceptedHead], None] = lambda old, new: None,
        closed: list[ClosedChain] | None = None,
    ) -> None:
        self._regions = set(cluster.region_names())
        self._heads = dict(stored)
        # node id -> its closed chains, oldest first (a node closes one per restore: few).
        self._closed: dict[str, list[ClosedChain]] = {}
        for chain in closed or ():
            self._closed.setdefault(chain.head.node_id, []).append(chain)
        self._save = save
        self._now_ms = now_ms
        self._on_accept = on_accept
        # (the closed chain's last head, the new chain's first), once the new one is saved.
        self._on_close = on_close

    def accept(
        self,
        head: SignedHead,
        binding: KeyBinding | None = None,
        extends: tuple[int, bytes] = (0, b""),
        incarnation: int = 0,
    ) -> int:
        """Records the head; returns the size now on record for its node. `binding`: the key
        the exporting node's certificate binds (None on an insecure port, where nothing binds a
        key and the first head pins it). `extends`: (size, hash) of the exporter's log entry at
        the size it believes on record. A longer head whose proof is for another size is not
        recorded: the size returned, smaller than the head's, is the one to prove. `incarnation`:
        the exporting node's; a later one than on record starts a new chain (see above)."""
        if head.region not in self._regions:
            raise InvalidArgument(
                f"audit head names unknown region {head.region!r}; configured regions: "
                f"{', '.join(sorted(self._regions))}"
            )
        if not head.node_id:
            # The head is taken only from the node it names; an unnamed one would be taken from
            # any node of the region and pin that node's key for the region.
            raise InvalidArgument(f"audit head of region {head.region} names no node; a head names its node")
        if not head.signature_valid():
            raise FailedPrecondition(
                f"audit head of region {head.region} at size {head.size} has an invalid signature"
            )
        if binding is not None and head.public_key != binding.key:
            # Checked before what is on record, so the first head is held to it too.
            bound = f"the key {binding.key.hex()[:16]}..." if binding.key else "no key"
            raise FailedPrecondition(
                f"audit head of region {head.region} is signed with key {head.public_key.hex()[:16]}..., "
                f"but the certificate of node {head.node_id} binds {bound}; a head is signed with the "
                "key the node's certificate binds (domicile certs issue --node)"
            )
        previous = self._heads.get(head.node_id)
        closes = False
        if previous is not None:
            old = previous.head
            if incarnation < previous.incarnation:
                raise FailedPrecondition(
                    f"audit head of node {head.node_id} (region {head.region}) comes from its incarnation "
                    f"{incarnation}, older than the incarnation {previous.incarnation} on record: a copy "
                    "of the node's store from before its restore is running"
                )
            closes = incarnation > previous.incarnation
            # On an insecure port nothing binds a key and a chain's first head pins it: the key
            # is in the node's data directory, which a restore starts anew, so a new chain may
            # pin a new one. Wherever a certificate binds the key, it was checked above.
            repins = closes and binding is None
            if head.region != old.region or (head.public_key != old.public_key and not repins):
                raise FailedPrecondition(
                    f"audit head of node {head.node_id} (region {head.region}) is signed with a key or "
                    f"names a region that is not the one on record (region {old.region}); a node's log "
                    "keeps its key"
                )
            if head.public_key != old.public_key:
                log.warning(
                    "node %s (region %s) signs the audit chain of its incarnation %d with a new key "
                    "%s...; nothing binds it on an insecure port",
                    head.node_id, head.region, incarnation, head.public_key.hex()[:16],
                )  # fmt: skip
        if previous is not None and not closes:
            old = previous.head
            if head.size < old.size:
                raise FailedPrecondition(
                    f"audit log of region {head.region} shrank from {old.size} to {head.size} "
                    "entries: it was truncated or rewritten"
                )
            if head.size == old.size:
                if head.head != old.head:
                    raise FailedPrecondition(
                        f"audit log of region {head.region} has {head.size} entries but ends in a "
                        "different hash than the head on record: it was rewritten"
                    )
                return old.size
            if extends != (old.size, old.head):
                if extends[0] != old.size:
                    return old.size
                raise FailedPrecondition(
                    f"audit log of node {head.node_id} (region {head.region}) does not extend the head "
                    f"on record: its entry {old.size} hashes to {extends[1].hex()[:16]}..., the head on "
                    f"record of {old.size} entries to {old.head.hex()[:16]}.... The log was put back from "
                    "an older copy or rewritten: entries the head on record covers are lost or changed"
                )
        accepted = AcceptedHead(head, self._now_ms(), incarnation)
        if closes and previous is not None:
            log.warning(
                "node %s (region %s) is incarnation %d: its audit chain starts again; the chain of "
                "incarnation %d is closed at %d entries and kept on record",
                head.node_id, head.region, incarnation, previous.incarnation, previous.head.size,
            )  # fmt: skip
        self._save(accepted, closes)
        if closes and previous is not None:
            self._closed.setdefault(head.node_id, []).append(
                ClosedChain(
                    previous.head, previous.incarnation, previous.accepted_unix_ms, accepted.accepted_unix_ms
                )
            )
            self._on_close(previous, accepted)
        self._heads[head.node_id] = accepted
        self._on_accept(accepted)
        return head.size

    def get(self, region: str, node_id: str = "") -> AcceptedHead:
        """The head of `node_id` of `region`; without a node id, of the region's one node (or,
        of several, the one named after the region)."""
        if region not in self._regions:
            raise NotFound(
                f"unknown region {region!r}; configured regions: {', '.join(sorted(self._regions))}"
            )
        if node_id:
            accepted = self._heads.get(node_id)
            if accepted is None or accepted.head.region != region:
                raise NotFound(f"node {node_id} of region {region} has not exported an audit head yet")
            return accepted
        of_region = {n: a for n, a in self._heads.items() if a.head.region == region}
        if not of_region:
            raise NotFound(f"region {region} has not exported an audit head yet")
        if len(of_region) == 1:
            return next(iter(of_region.values()))
        if region in of_region:
            return of_region[region]
        raise NotFound(
            f"region {region} has several nodes with audit logs ({', '.join(sorted(of_region))}); name one"
        )

    def closed(self, node_id: str) -> list[ClosedChain]:
        """The audit chains of `node_id` that its later incarnations closed, oldest first."""
        return list(self._closed.get(node_id, ()))

    def all(self) -> dict[str, AcceptedHead]:
        return dict(self._heads)
