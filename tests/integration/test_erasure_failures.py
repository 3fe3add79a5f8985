"""Erasure under failures of its own steps: a block that fails to be stored, a sweep of the
permanent list that fails or overlaps another. Each leaves the subject refused, and a later
attempt finishes the work (real SQLite store, group committer, key store and audit log; the only
fault is a store whose block_subject fails once, as a disk error or a busy database would)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from domicile.audit import subject_hash
from domicile.cluster import ClusterSpec, NamespaceSpec, RegionSpec
from domicile.errors import FailedPrecondition, Unavailable
from domicile.hlc import HybridClock
from domicile.model import Classification
from domicile.subjects import ErasureOrder, RegionReceipt
from node.compliance.audit_log import AuditLog, load_or_create_keys
from node.crypto.keyring import Keyring, load_or_create_kek
from node.crypto.sealing import Sealer
from node.engine.base import LocalWrite
from node.engine.group_commit import GroupCommitter
from node.engine.sqlite import SQLiteEngine
from node.lifecycle.erased_list_store import load_erased_list
from node.lifecycle.erasure import Eraser

REGION = "eu-west-1"
NODE = "eu-west-1-a"
CLUSTER = ClusterSpec(
    regions=(RegionSpec(REGION, "IE", "EU"),),
    namespaces=(
        NamespaceSpec(
            "customers", is_global=True, classification=Classification.PERSONAL, retention_class="user_data"
        ),
        NamespaceSpec(
            "sessions", is_global=True, classification=Classification.PERSONAL, retention_class="cache"
        ),
        NamespaceSpec(
            "trades",
            is_global=True,
            classification=Classification.FINANCIAL,
            retention_class="transaction_data",
        ),
    ),
)


class FlakyEngine(SQLiteEngine):
    """A real SQLite engine whose next `fail_blocks` block_subject calls fail, like a disk error
    or a busy database would (fault injection in a dependency, not in the code under test)."""

    fail_blocks = 0

    def block_subject(self, digest: str, request_id: str) -> None:
        if self.fail_blocks:
            self.fail_blocks -= 1
            raise Unavailable("injected: the store could not write the block")
        super().block_subject(digest, request_id)


@dataclass
class Node:
    tmp: Path
    engine: FlakyEngine
    committer: GroupCommitter
    keyring: Keyring
    audit: AuditLog
    subject_key: bytes
    sealer: Sealer
    reports: list[tuple[str, RegionReceipt]]

    def eraser(self) -> Eraser:
        async def report(request_id: str, receipt: RegionReceipt) -> None:
            self.reports.append((request_id, receipt))

        eraser = Eraser(
            region=REGION,
            node_id=NODE,
            engine=self.engine,
            committer=self.committer,
            keyring=self.keyring,
            audit=self.audit,
            subject_key=self.subject_key,
            report=report,
        )
        self.committer.guard = eraser.refusal
        return eraser

    async def put(self, namespace: str, key: str, subject: str, value: bytes) -> None:
        sealed = await self.sealer.seal_value(CLUSTER, namespace, key, subject, value)
        await self.committer.submit(
            LocalWrite(namespace, key, value=sealed, subject_id=subject, subject_jurisdiction="DE")
        )


async def open_node(tmp: Path) -> Node:
    engine = FlakyEngine(tmp / "store.sqlite3", NODE, REGION, synchronous="OFF")
    clock = HybridClock()
    committer = GroupCommitter(engine, clock.now, batch_records_max=64, queue_records_max=1024)
    committer.start()
    signing_key, subject_key = load_or_create_keys(tmp / "keys-audit")
    audit = AuditLog(
        tmp / "audit.sqlite3",
        region=REGION,
        node_id=NODE,
        signing_key=signing_key,
        subject_key=subject_key,
        hlc=clock.now,
    )
    audit.start()
    keyring = Keyring(tmp / "keys" / "keys.sqlite3", load_or_create_kek(tmp / "keys"))
    return Node(tmp, engine, committer, keyring, audit, subject_key, Sealer(keyring), [])


async def close_node(node: Node) -> None:
    await node.committer.stop()
    await node.audit.close()
    node.keyring.close()
    node.engine.close()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await open_node(tmp_path)
    try:
        yield n
    finally:
        await close_node(n)


async def erase_after_a_failed_block(node: Node) -> Eraser:
    """An erasure of c-1001 whose first attempt fails to store the block (it "will be retried"),
    and whose retry, at the next topology, reports it done."""
    await node.put("customers", "c1", "c-1001", b"alice")
    eraser = node.eraser()
    await eraser.load()
    order = ErasureOrder("req-1", "c-1001", 0, regions_pending=(REGION,))
    node.engine.fail_blocks = 1
    eraser.apply((order,), CLUSTER, ())
    await eraser.wait_idle()
    assert node.reports == []
    eraser.apply((order,), CLUSTER, ())
    await eraser.wait_idle()
    assert [rid for rid, _ in node.reports] == ["req-1"]
    return eraser


async def test_a_retry_stores_the_block_its_first_attempt_failed_to_store(node: Node) -> None:
    """Regression: the block was marked in memory before it was stored, and a retry after a
    failed store trusted the mark: the erasure reported success with no block in the store."""
    await erase_after_a_failed_block(node)

    # The block must be in the store: it is what keeps the subject out after a restart while
    # the request is still open elsewhere (the permanent list only has completed requests).
    digest = subject_hash(node.subject_key, "c-1001")
    assert node.engine.blocked_subjects().get(digest) == "req-1", (
        "the erasure reported success but its block of the subject was never stored"
    )


async def test_after_a_restart_the_subject_stays_blocked(node: Node) -> None:
    """Regression: the same, seen after a restart: the reported order is no longer in the
    topology, and nothing stored kept its subject out, so new writes of it committed."""
    eraser = await erase_after_a_failed_block(node)
    assert eraser.erased_by("c-1001") == "req-1"

    # Restart: the eraser is loaded from the store (its order was reported, so the topology
    # no longer names this region as pending).
    restarted = node.eraser()
    await restarted.load()
    assert restarted.erased_by("c-1001") == "req-1", "after a restart the erased subject is not blocked"
    # A new local write of the subject, in a class that had no key here, is refused.
    with pytest.raises(FailedPrecondition):
        await node.put("sessions", "s1", "c-1001", b"alice's session")


async def test_a_failed_sweep_keeps_the_listed_subjects_refused_and_sweeps_them_again(node: Node) -> None:
    """Regression: a sweep of the permanent list that failed took its subjects off the list in
    memory, so writes about them committed until the next registration."""
    # c-1 still has a record here (a store that predates the erasure); c-2 has none.
    await node.put("customers", "c1", "c-1", b"one")
    eraser = node.eraser()
    await eraser.load()
    list_key = b"k" * 32
    listed = [(subject_hash(list_key, "c-1"), "req-1"), (subject_hash(list_key, "c-2"), "req-2")]

    node.engine.fail_blocks = 1  # the sweep's erasure of c-1 fails once (a busy/failing store)
    eraser.adopt_erased(list_key, listed, CLUSTER, ())
    # Right after adopting, both listed subjects are refused ...
    assert eraser.erased_by("c-2") == "req-2"
    await eraser.wait_idle()
    # ... and stay refused once the sweep has failed (the writer's last check refuses them).
    assert eraser.erased_by("c-2") == "req-2"
    with pytest.raises(FailedPrecondition):
        await node.put("customers", "c2", "c-2", b"two, written after c-2 was erased")
    assert load_erased_list(node.engine) is None, "nothing swept, nothing stored"
    # The next registration sweeps them again: c-1's record is erased, and the list stored.
    eraser.adopt_erased(list_key, listed, CLUSTER, ())
    await eraser.wait_idle()
    state = node.engine.get("customers", "c1")
    assert state is not None and not state.has_live()
    assert load_erased_list(node.engine) == (list_key, dict(listed))


async def adopt_twice(node: Node, fails: int) -> tuple[Eraser, bytes, list[tuple[str, str]]]:
    """c-b still has a record here; c-a none. Two registrations in a row (a reconnect) adopt the
    list twice, the second adding c-b while the first sweep is under way; storing c-b's block
    fails `fails` times. Returns the eraser, the list's key and the second list."""
    await node.put("customers", "b1", "c-b", b"bee")
    eraser = node.eraser()
    await eraser.load()
    list_key = b"k" * 32
    first = [(subject_hash(list_key, "c-a"), "req-a")]
    second = [*first, (subject_hash(list_key, "c-b"), "req-b")]
    node.engine.fail_blocks = fails
    eraser.adopt_erased(list_key, first, CLUSTER, ())
    eraser.adopt_erased(list_key, second, CLUSTER, ())
    await eraser.wait_idle()
    return eraser, list_key, second


async def test_a_sweep_that_overlaps_a_failing_one_finishes_its_work(node: Node) -> None:
    # The second registration's sweep takes over what the first failed to do.
    _, list_key, second = await adopt_twice(node, fails=1)
    state = node.engine.get("customers", "b1")
    assert state is not None and not state.has_live()
    assert load_erased_list(node.engine) == (list_key, dict(second))


async def test_overlapping_sweeps_store_no_subject_before_its_sweep_finished(node: Node) -> None:
    """Regression: a sweep stored the whole list in memory, including a subject another sweep
    was still erasing; when that one failed, the subject was stored as swept and never swept
    again, its record live for good."""
    eraser, list_key, second = await adopt_twice(node, fails=2)  # both sweeps fail on c-b
    state = node.engine.get("customers", "b1")
    assert state is not None and state.has_live()  # not erased yet: the next registration sweeps again
    assert eraser.erased_by("c-b") == "req-b", "refused meanwhile"
    stored = load_erased_list(node.engine)
    assert stored is None or subject_hash(list_key, "c-b") not in stored[1]

    # Restart, and the next registration brings the same list: c-b must be swept now.
    restarted = node.eraser()
    await restarted.load()
    restarted.adopt_erased(list_key, second, CLUSTER, ())
    await restarted.wait_idle()
    state = node.engine.get("customers", "b1")
    assert state is not None and not state.has_live(), (
        "c-b's record survives for good: the first sweep stored c-b in the list as seen before "
        "any sweep had erased it"
    )
