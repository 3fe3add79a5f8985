"""A closed audit chain is kept on record across a coordinator restart, also when the head it
closes was stored by an older coordinator under the node's region rather than its node id."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.audit_heads import AuditHeadBook, stored_closed_chains, stored_heads
from coordinator.store import CoordinatorStore
from domicile.audit import SignedHead, sign_head
from domicile.cluster import ClusterSpec, RegionSpec
from domicile.wire.audit import head_to_bytes

CLUSTER = ClusterSpec(regions=(RegionSpec("eu-west-1", "IE", "EU"), RegionSpec("us-east-1", "US", "US")))
KEY = Ed25519PrivateKey.generate()
NODE = "eu-west-1-a"  # a node id that is not its region's name


def _head(size: int, last: bytes) -> SignedHead:
    return sign_head(KEY, region="eu-west-1", node_id=NODE, size=size, head=last, time_ms=1_000 + size)


def _book(store: CoordinatorStore) -> AuditHeadBook:
    # Wired exactly as coordinator/daemon.py wires it.
    return AuditHeadBook(
        CLUSTER,
        stored_heads(store.load_audit_heads()),
        save=lambda a, closes: store.save_audit_head(
            a.head.node_id, head_to_bytes(a.head), a.accepted_unix_ms, a.incarnation, closes, a.head.region
        ),
        now_ms=lambda: 50,
        closed=stored_closed_chains(store.closed_audit_heads()),
    )


def test_closed_chain_of_a_head_stored_under_its_region_survives_a_coordinator_restart(
    tmp_path: Path,
) -> None:
    """Regression: the closed row was copied from the row keyed by the node id only, so a head an
    older coordinator stored under the region was closed in memory and lost at the restart."""
    store = CoordinatorStore(tmp_path)
    # What an older coordinator wrote: the node's head (100 entries) in a row keyed by region.
    store.save_audit_head("eu-west-1", head_to_bytes(_head(100, b"\x64" * 32)), 10)
    book = _book(store)
    assert book.get("eu-west-1", NODE).head.size == 100
    # The node is restored: a new incarnation's first head closes the 100-entry chain.
    assert book.accept(_head(2, b"\x02" * 32), incarnation=1) == 2
    assert [c.head.size for c in book.closed(NODE)] == [100]  # in memory: kept
    store.close()

    # The coordinator restarts: the closed chain (proof of the 100 lost entries) must still be there.
    store = CoordinatorStore(tmp_path)
    try:
        book = _book(store)
        assert book.get("eu-west-1", NODE).incarnation == 1
        assert [c.head.size for c in book.closed(NODE)] == [100]
    finally:
        store.close()
