"""The coordinator's book of signed audit heads: what it accepts and what it refuses, and why."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.audit_heads import (
    AcceptedHead,
    AuditHeadBook,
    KeyBinding,
    stored_closed_chains,
    stored_heads,
)
from domicile.audit import SignedHead, public_key_bytes, sign_head
from domicile.cluster import ClusterSpec, RegionSpec
from domicile.errors import FailedPrecondition, InvalidArgument, NotFound
from domicile.wire.audit import head_to_bytes

CLUSTER = ClusterSpec(regions=(RegionSpec("eu-west-1", "IE", "EU"), RegionSpec("us-east-1", "US", "US")))
KEY = Ed25519PrivateKey.generate()


def head(size: int, last: bytes = b"\x01" * 32, *, key: Ed25519PrivateKey = KEY, node: str = "eu-west-1",
         region: str = "eu-west-1") -> SignedHead:  # fmt: skip
    return sign_head(key, region=region, node_id=node, size=size, head=last, time_ms=1_000 + size)


def book() -> tuple[AuditHeadBook, list[AcceptedHead]]:
    saved: list[AcceptedHead] = []
    return AuditHeadBook(CLUSTER, {}, save=lambda a, closes: saved.append(a), now_ms=lambda: 42), saved


def test_heads_that_extend_the_log_are_accepted_and_saved():
    b, saved = book()
    assert b.accept(head(3)) == 3
    assert b.accept(head(7, b"\x02" * 32), extends=(3, b"\x01" * 32)) == 7
    assert [a.head.size for a in saved] == [3, 7]
    assert b.get("eu-west-1").head.size == 7 and b.get("eu-west-1").accepted_unix_ms == 42


def test_the_same_head_again_is_idempotent():
    b, saved = book()
    b.accept(head(3))
    assert b.accept(head(3)) == 3
    assert len(saved) == 1


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (head(2), "shrank from 3 to 2 entries"),
        (head(3, b"\x09" * 32), "ends in a different hash"),
        (head(4, key=Ed25519PrivateKey.generate()), "not the one on record"),
        (head(4, region="us-east-1"), "not the one on record"),
    ],
    ids=["truncated", "rewritten", "other key", "other region"],
)
def test_a_head_that_contradicts_the_record_is_refused_and_changes_nothing(second: SignedHead, message: str):
    b, saved = book()
    b.accept(head(3))
    with pytest.raises(FailedPrecondition, match=message):
        b.accept(second)
    assert len(saved) == 1 and b.get("eu-west-1").head.size == 3


def test_two_nodes_of_a_region_keep_logs_and_heads_of_their_own():
    b, _ = book()
    other_key = Ed25519PrivateKey.generate()
    b.accept(head(3))
    b.accept(head(9, b"\x07" * 32, key=other_key, node="eu-west-1-2"))
    assert b.get("eu-west-1", "eu-west-1-2").head.size == 9
    assert b.get("eu-west-1", "eu-west-1").head.size == 3
    assert b.get("eu-west-1").head.node_id == "eu-west-1"  # the one named after the region
    with pytest.raises(NotFound, match="has not exported"):
        b.get("us-east-1", "eu-west-1-2")  # a node of another region
    # The second node's key is pinned for it, as the first's is for the first.
    with pytest.raises(FailedPrecondition, match="not the one on record"):
        b.accept(head(10, node="eu-west-1-2"))


def test_a_forged_signature_is_refused():
    b, saved = book()
    forged = SignedHead(**{**head(3).__dict__, "size": 30})
    with pytest.raises(FailedPrecondition, match="invalid signature"):
        b.accept(forged)
    assert saved == []


def test_an_unknown_region_is_invalid_and_a_missing_head_not_found():
    b, _ = book()
    with pytest.raises(
        InvalidArgument, match="unknown region 'mars-1'; configured regions: eu-west-1, us-east-1"
    ):
        b.accept(head(1, region="mars-1"))
    with pytest.raises(NotFound, match="has not exported an audit head yet"):
        b.get("us-east-1")
    with pytest.raises(NotFound, match="unknown region"):
        b.get("mars-1")


def test_heads_stored_by_region_are_read_back_by_node():
    # An older coordinator store keyed each head by its region; a newer one by its node id.
    legacy = head(3, node="eu-west-1-a")
    newer = head(5, b"\x05" * 32, node="eu-west-1-a")
    rows = {"eu-west-1": (head_to_bytes(legacy), 10, 0), "eu-west-1-a": (head_to_bytes(newer), 20, 0)}
    heads = stored_heads(rows)
    assert list(heads) == ["eu-west-1-a"] and heads["eu-west-1-a"].head.size == 5


def test_a_longer_head_without_proof_is_not_recorded_and_the_size_to_prove_is_answered():
    b, saved = book()
    b.accept(head(3))
    # No proof, or one for another size (a coordinator restored from an older copy holds less
    # than the exporter last heard): the answer names the size on record, nothing is recorded.
    assert b.accept(head(7, b"\x02" * 32)) == 3
    assert b.accept(head(7, b"\x02" * 32), extends=(5, b"\x09" * 32)) == 3
    assert [a.head.size for a in saved] == [3] and b.get("eu-west-1").head.size == 3


def test_regression_a_log_that_grew_again_after_a_rewind_does_not_replace_the_head_on_record():
    # Found in a torture run: a node put back on an older copy of its data directory lost
    # anchored audit entries; once its log grew past the recorded size, its new head replaced
    # the one that proved the loss, and the audit check passed or failed by timing alone.
    b, saved = book()
    b.accept(head(6, b"\x06" * 32))
    with pytest.raises(FailedPrecondition, match="does not extend the head on record") as info:
        b.accept(head(85, b"\x55" * 32), extends=(6, b"\x0a" * 32))  # its entry 6 is another
    assert "06060606" in info.value.message and "0a0a0a0a" in info.value.message
    assert [a.head.size for a in saved] == [6]


def test_a_later_incarnation_closes_the_chain_on_record_and_starts_a_new_one():
    # A node restored from a backup, or found put back from an older copy, is a new incarnation:
    # its log does not extend the head on record, and its chain starts again (the old head is
    # closed, kept by the store: save is told).
    closing: list[bool] = []
    closed: list[tuple[int, int]] = []
    b = AuditHeadBook(
        CLUSTER,
        {},
        save=lambda a, closes: closing.append(closes),
        now_ms=lambda: 42,
        on_close=lambda old, new: closed.append((old.head.size, new.head.size)),
    )
    b.accept(head(6, b"\x06" * 32))
    assert b.accept(head(2, b"\x02" * 32), incarnation=1700000000) == 2
    assert closing == [False, True] and closed == [(6, 2)]
    assert b.get("eu-west-1").incarnation == 1700000000 and b.get("eu-west-1").head.size == 2
    # Within the new incarnation the rules are as before: no shrinking, proof to grow.
    with pytest.raises(FailedPrecondition, match="shrank"):
        b.accept(head(1), incarnation=1700000000)
    assert b.accept(head(5, b"\x05" * 32), extends=(2, b"\x02" * 32), incarnation=1700000000) == 5


def test_an_older_incarnation_is_refused_and_a_new_one_keeps_the_key_its_certificate_binds():
    b, _ = book()
    bound = KeyBinding(public_key_bytes(KEY))
    b.accept(head(6), bound, incarnation=5)
    with pytest.raises(FailedPrecondition, match="incarnation 4, older than the incarnation 5"):
        b.accept(head(9, b"\x09" * 32), bound, extends=(6, b"\x01" * 32), incarnation=4)
    # A certificate reissued with another audit key does not start a chain with it.
    other = Ed25519PrivateKey.generate()
    with pytest.raises(FailedPrecondition, match="keeps its key"):
        b.accept(head(1, key=other), KeyBinding(public_key_bytes(other)), incarnation=6)
    assert b.get("eu-west-1").head.size == 6


def test_regression_on_an_insecure_port_a_new_incarnation_pins_the_key_of_its_restored_data_dir():
    # Nothing binds the key on an insecure port: it is audit-signing.key in the node's data
    # directory, which a restore starts anew. Its new chain was refused for good ("keeps its
    # key"), and the restored node's audit log was never anchored again.
    b, _ = book()
    b.accept(head(6))
    restored = Ed25519PrivateKey.generate()
    # Within a chain the key stays pinned (the negative control).
    with pytest.raises(FailedPrecondition, match="keeps its key"):
        b.accept(head(7, b"\x07" * 32, key=restored), extends=(6, b"\x01" * 32))
    assert b.accept(head(2, b"\x02" * 32, key=restored), incarnation=3) == 2
    assert b.get("eu-west-1").head.public_key == public_key_bytes(restored)
    ((closed),) = b.closed("eu-west-1")
    assert closed.head.public_key == public_key_bytes(KEY) and closed.head.size == 6
    with pytest.raises(FailedPrecondition, match="keeps its key"):
        b.accept(head(4, b"\x04" * 32), extends=(2, b"\x02" * 32), incarnation=3)


def test_stored_heads_prefer_the_later_incarnation():
    old = head(9, b"\x09" * 32)
    new = head(2, b"\x02" * 32)
    rows = {"eu-west-1": (head_to_bytes(old), 1, 0), "eu-west-1-legacy": (head_to_bytes(new), 2, 7)}
    assert stored_heads(rows)["eu-west-1"].incarnation == 7


def test_closed_chains_are_kept_per_node_in_order_and_read_back_from_the_store():
    clock = iter(range(100, 1000, 100))
    b = AuditHeadBook(CLUSTER, {}, save=lambda a, closes: None, now_ms=lambda: next(clock))
    b.accept(head(6, b"\x06" * 32))  # accepted at 100
    b.accept(head(2, b"\x02" * 32), incarnation=5)  # closes incarnation 0 at 200
    b.accept(head(4, b"\x04" * 32), extends=(2, b"\x02" * 32), incarnation=5)  # the chain grows: 300
    b.accept(head(1, b"\x01" * 32), incarnation=9)  # closes incarnation 5 at 400
    b.accept(head(3, node="us-east-1", region="us-east-1"))
    closed = b.closed("eu-west-1")
    assert [(c.incarnation, c.head.size, c.accepted_unix_ms, c.closed_unix_ms) for c in closed] == [
        (0, 6, 100, 200),
        (5, 4, 300, 400),
    ]
    assert b.closed("us-east-1") == [] and b.closed("nobody") == []
    # The store's rows, oldest first, give the book the same chains after a restart.
    rows = [
        ("eu-west-1", c.incarnation, head_to_bytes(c.head), c.accepted_unix_ms, c.closed_unix_ms)
        for c in closed
    ]
    again = AuditHeadBook(
        CLUSTER, {}, save=lambda a, closes: None, now_ms=lambda: 0, closed=stored_closed_chains(rows)
    )
    assert again.closed("eu-west-1") == closed
