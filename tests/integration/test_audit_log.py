"""The node's audit log on a real SQLite file: group commit, resume, signed heads, the fail-closed
queue, and tampering done behind its back through a separate sqlite3 connection."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from domicile.audit import AuditEntry, SignedHead, StoredEntry, public_key_bytes, subject_hash, verify_log
from domicile.errors import (
    DataCorruption,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from domicile.hlc import HybridClock
from domicile.sqlite_checkpoint import EVERY_ROWS_DEFAULT
from node.compliance.audit_log import SIGNING_KEY_FILE, SUBJECT_KEY_FILE, AuditLog, load_or_create_keys
from tests.support import audit_tamper

REGION = "eu-west-1"
NODE = "eu-west-1-a"


class Opener:
    """Creates AuditLogs on one file with the node's keys, and closes them all at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "audit.db"
        self.signing_key, self.subject_key = load_or_create_keys(tmp_path / "keys")
        self.clock = HybridClock()
        self.heads: list[SignedHead] = []
        self.logs: list[AuditLog] = []

    def open(self, **options: object) -> AuditLog:
        log = AuditLog(
            self.path,
            region=REGION,
            node_id=NODE,
            signing_key=self.signing_key,
            subject_key=self.subject_key,
            hlc=self.clock.now,
            on_head=self.heads.append,
            **options,  # type: ignore[arg-type]
        )
        log.start()
        self.logs.append(log)
        return log

    async def close_all(self) -> None:
        for log in self.logs:
            await log.close()


@pytest.fixture
async def opener(tmp_path: Path) -> AsyncIterator[Opener]:
    o = Opener(tmp_path)
    try:
        yield o
    finally:
        await o.close_all()


async def fill(log: AuditLog, n: int, action: str = "put") -> list[int]:
    futures = [
        log.record(principal="client:peer", action=action, namespace="orders", key=f"k{i}", detail=str(i))
        for i in range(n)
    ]
    return list(await asyncio.gather(*futures))


def decoded(entries: list[StoredEntry]) -> list[AuditEntry]:
    return [AuditEntry.decode(e.body) for e in entries]


# -- keys -------------------------------------------------------------------------------------


def test_keys_are_created_once_private_and_then_reloaded(tmp_path: Path) -> None:
    signing, subject = load_or_create_keys(tmp_path / "data")
    for name in (SIGNING_KEY_FILE, SUBJECT_KEY_FILE):
        assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600
    assert len(subject) == 32
    again_signing, again_subject = load_or_create_keys(tmp_path / "data")
    assert public_key_bytes(again_signing) == public_key_bytes(signing)
    assert again_subject == subject
    assert (tmp_path / "data" / SIGNING_KEY_FILE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(
        [SIGNING_KEY_FILE, SUBJECT_KEY_FILE]
    )


def test_keys_readable_by_others_or_damaged_are_refused(tmp_path: Path) -> None:
    load_or_create_keys(tmp_path)
    os.chmod(tmp_path / SUBJECT_KEY_FILE, 0o644)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        load_or_create_keys(tmp_path)
    os.chmod(tmp_path / SUBJECT_KEY_FILE, 0o600)
    (tmp_path / SUBJECT_KEY_FILE).write_bytes(b"short")
    with pytest.raises(FailedPrecondition, match="5 bytes"):
        load_or_create_keys(tmp_path)
    (tmp_path / SIGNING_KEY_FILE).write_bytes(b"not a key")
    with pytest.raises(FailedPrecondition, match="PEM"):
        load_or_create_keys(tmp_path)


# -- writing ----------------------------------------------------------------------------------


async def test_records_resolve_with_contiguous_seqs_once_durable(opener: Opener) -> None:
    log = opener.open()
    seq = await log.record(
        principal="client:peer", action="put", namespace="orders", key="a", subject_id="c-1"
    )
    assert seq == 1
    assert log.size == 1
    assert await fill(log, 5) == [2, 3, 4, 5, 6]
    stored = log.read(0, 100)
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5, 6]
    first = decoded(stored)[0]
    assert (first.region, first.node_id, first.principal, first.action) == (
        REGION,
        NODE,
        "client:peer",
        "put",
    )
    assert first.subject == subject_hash(opener.subject_key, "c-1")
    assert first.hlc > 0
    assert first.time_ms > 0
    assert log.verify_local().ok


async def test_many_concurrent_records_keep_their_order(opener: Opener) -> None:
    log = opener.open(batch_entries_max=16)
    n = 2500  # more than two pages of iter_all
    seqs = await fill(log, n)
    assert seqs == list(range(1, n + 1))
    entries = decoded(list(log.iter_all()))
    assert [e.detail for e in entries] == [str(i) for i in range(n)]
    hlcs = [e.hlc for e in entries]
    assert hlcs == sorted(hlcs)
    assert len(set(hlcs)) == n
    assert log.batches_committed >= n // 16


async def test_concurrent_tasks_each_get_their_own_entry(opener: Opener) -> None:
    log = opener.open(batch_entries_max=8)

    async def worker(w: int) -> list[int]:
        out = []
        for i in range(20):
            out.append(await log.record(principal=f"node:w{w}", action="read", detail=f"{w}/{i}"))
        return out

    results = await asyncio.gather(*(worker(w) for w in range(10)))
    assert sorted(s for r in results for s in r) == list(range(1, 201))
    for r in results:
        assert r == sorted(r)
    assert log.verify_local().ok


async def test_close_and_reopen_continues_the_chain(opener: Opener) -> None:
    log = opener.open()
    await fill(log, 10)
    before = log.head()
    await log.close()
    again = opener.open()
    assert again.size == 10
    assert again.head().head == before.head
    assert await fill(again, 5) == list(range(11, 16))
    report = again.verify_local()
    assert report.ok
    assert report.entries_checked == 15
    assert verify_log(again.iter_all(), before).anchored_size == 10
    assert verify_log(again.iter_all(), again.head()).anchored_size == 15


async def test_the_log_leaves_its_checkpoints_to_a_thread_of_its_own(opener: Opener) -> None:
    log = opener.open(batch_entries_max=8)
    checkpointer = log.checkpointer
    assert checkpointer is not None
    # Batches of eight entries, each a commit of at least eight rows.
    await fill(log, 20 * EVERY_ROWS_DEFAULT // 8)
    deadline = time.monotonic() + 10
    while checkpointer.checkpoints == 0:
        assert time.monotonic() < deadline, "the audit log's checkpointer made no checkpoint"
        await asyncio.sleep(0.001)
    await log.close()
    assert checkpointer.failures == 0
    assert checkpointer.name not in {thread.name for thread in threading.enumerate()}
    # The write connection closed last: SQLite checkpointed and removed the WAL.
    assert not await asyncio.to_thread(os.path.exists, f"{opener.path}-wal")


async def test_close_drains_what_is_queued(opener: Opener) -> None:
    log = opener.open()
    futures = [log.record(principal="operator", action="policy_change", detail=str(i)) for i in range(50)]
    await log.close()
    assert [f.result() for f in futures] == list(range(1, 51))
    with pytest.raises(Unavailable, match="stopped"):
        log.record(principal="operator", action="put")
    with pytest.raises(Unavailable, match="closed"):
        log.read(0, 10)
    assert opener.open().size == 50


async def test_flush_waits_for_everything_recorded(opener: Opener) -> None:
    log = opener.open()
    for i in range(30):
        log.record(principal="client:peer", action="read", detail=str(i))
    await log.flush()
    assert log.size == 30
    await log.flush()


async def test_on_head_gets_a_valid_signed_head_before_the_writer_is_answered(opener: Opener) -> None:
    log = opener.open()
    seq = await log.record(principal="client:peer", action="put")
    assert opener.heads
    head = opener.heads[-1]
    assert head.size == seq == 1
    assert head.signature_valid()
    assert head.public_key == public_key_bytes(opener.signing_key)
    assert (head.region, head.node_id) == (REGION, NODE)
    assert head.head == log.read(0, 1)[0].hash
    await fill(log, 40)
    last = opener.heads[-1]
    assert last.size == log.size == 41
    assert verify_log(log.iter_all(), last, trusted_public_key=head.public_key).anchored_size == 41
    sizes = [h.size for h in opener.heads]
    assert sizes == sorted(sizes)


async def test_head_is_signed_once_per_size(opener: Opener) -> None:
    log = opener.open()
    empty = log.head()
    assert (empty.size, empty.signature_valid()) == (0, True)
    await fill(log, 3)
    assert log.head() is log.head()
    assert log.head().size == 3


async def test_a_full_queue_fails_closed_and_records_nothing_half_way(opener: Opener) -> None:
    log = opener.open(queue_entries_max=4, batch_entries_max=2)
    blocker = sqlite3.connect(opener.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer now waits for the file lock
    accepted = []
    try:
        with pytest.raises(ResourceExhausted, match="queue is full"):
            for i in range(4 + 2 + 1):
                accepted.append(log.record(principal="client:peer", action="put", detail=str(i)))
        # At most one batch left the queue before the writer blocked.
        assert 4 <= len(accepted) <= 4 + 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await asyncio.gather(*accepted) == list(range(1, len(accepted) + 1))
    assert [e.detail for e in decoded(log.read(0, 100))] == [str(i) for i in range(len(accepted))]
    assert log.verify_local().ok


async def test_a_failed_write_fails_its_callers_and_the_log_goes_on(opener: Opener) -> None:
    log = opener.open()
    await fill(log, 3)
    with sqlite3.connect(opener.path) as admin:
        admin.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    futures = [log.record(principal="client:peer", action="put", detail="lost") for _ in range(3)]
    for f in futures:
        with pytest.raises(Unavailable, match="disk full"):
            await f
    with pytest.raises(Unavailable, match="disk full"):
        await log.flush()
    await log.flush()  # reported once
    assert log.size == 3
    with sqlite3.connect(opener.path) as admin:
        admin.execute("DROP TRIGGER refuse")
    assert await fill(log, 2) == [4, 5]
    assert log.verify_local().ok


async def test_a_writer_that_cannot_go_on_fails_everything_and_refuses_more(opener: Opener) -> None:
    log = opener.open()
    await fill(log, 2)
    with sqlite3.connect(opener.path) as admin:
        admin.execute("DROP TABLE audit")
    pending = [log.record(principal="client:peer", action="put") for _ in range(5)]
    for f in pending:
        with pytest.raises(Unavailable):
            await f
    with pytest.raises(Unavailable, match="cannot write"):
        log.record(principal="client:peer", action="put")


async def test_bad_arguments_are_refused(opener: Opener, tmp_path: Path) -> None:
    log = opener.open()
    with pytest.raises(InvalidArgument, match="detail is 5000 characters"):
        log.record(principal="client:peer", action="put", detail="x" * 5000)
    with pytest.raises(InvalidArgument, match="action is empty"):
        log.record(principal="client:peer", action="")
    with pytest.raises(InvalidArgument, match="limit"):
        log.read(0, 0)
    with pytest.raises(InvalidArgument, match="after_seq"):
        log.read(-1, 10)
    assert log.size == 0
    with pytest.raises(InvalidArgument, match="queue_entries_max"):
        AuditLog(
            tmp_path / "x.db",
            region=REGION,
            node_id=NODE,
            signing_key=opener.signing_key,
            subject_key=opener.subject_key,
            hlc=opener.clock.now,
            queue_entries_max=0,
        )


async def test_a_log_whose_last_hash_is_damaged_is_not_continued(opener: Opener) -> None:
    log = opener.open()
    await fill(log, 3)
    await log.close()
    with sqlite3.connect(opener.path) as admin:
        admin.execute("UPDATE audit SET hash = x'0102' WHERE seq = 3")
    with pytest.raises(DataCorruption, match="2-byte hash"):
        opener.open()


async def test_another_nodes_file_is_refused(opener: Opener) -> None:
    await opener.open().close()
    other = AuditLog(
        opener.path,
        region=REGION,
        node_id="eu-west-1-b",
        signing_key=opener.signing_key,
        subject_key=opener.subject_key,
        hlc=opener.clock.now,
    )
    with pytest.raises(FailedPrecondition, match="eu-west-1-a"):
        other.start()


# -- tampering through the file ---------------------------------------------------------------

Tamper = Callable[[Path], None]

TAMPERINGS: dict[str, tuple[Tamper, tuple[str, int]]] = {
    "flipped-body-byte": (lambda p: audit_tamper.flip_body_byte(p, 7), ("modified", 7)),
    "deleted-entry": (lambda p: audit_tamper.delete_entry(p, 9), ("missing", 9)),
    "swapped-entries": (lambda p: audit_tamper.swap_entries(p, 4, 12), ("reordered", 4)),
    "truncated-tail": (lambda p: audit_tamper.truncate(p, 15), ("truncated", 16)),
    "rewritten-chain": (lambda p: audit_tamper.rewrite_chain(p, 5, "nothing happened"), ("rewritten", 20)),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
async def test_tampering_with_the_file_is_caught(opener: Opener, name: str) -> None:
    tamper, expected = TAMPERINGS[name]
    log = opener.open()
    await fill(log, 20)
    head = log.head()
    assert verify_log(log.iter_all(), head).ok
    tamper(opener.path)
    report = verify_log(log.iter_all(), head, trusted_public_key=public_key_bytes(opener.signing_key))
    assert not report.ok
    assert expected in [(p.kind, p.seq) for p in report.problems], report.problems
    assert report.anchored_size == 0 or expected[0] not in ("truncated", "rewritten")


async def test_each_tampering_names_only_its_own_damage(opener: Opener) -> None:
    log = opener.open()
    await fill(log, 20)
    head = log.head()
    audit_tamper.flip_body_byte(opener.path, 3)
    audit_tamper.swap_entries(opener.path, 10, 11)
    audit_tamper.delete_entry(opener.path, 15)
    report = verify_log(log.iter_all(), head)
    assert [(p.kind, p.seq) for p in report.problems] == [
        ("modified", 3),
        ("reordered", 10),
        ("reordered", 11),
        ("missing", 15),
    ]
    assert report.anchored_size == 20
    assert not log.verify_local().ok


async def test_a_rewrite_is_invisible_locally_but_not_to_the_exported_head(opener: Opener) -> None:
    log = opener.open()
    await fill(log, 10)
    exported = opener.heads[-1]
    audit_tamper.rewrite_chain(opener.path, 2, "edited")
    assert log.verify_local().ok
    assert [p.kind for p in verify_log(log.iter_all(), exported).problems] == ["rewritten"]


async def test_a_truncated_log_reopens_and_the_head_check_still_fails(opener: Opener) -> None:
    log = opener.open()
    await fill(log, 10)
    exported = log.head()
    await log.close()
    audit_tamper.truncate(opener.path, 4)
    again = opener.open()
    assert again.size == 4
    assert [(p.kind, p.seq) for p in verify_log(again.iter_all(), exported).problems] == [("truncated", 5)]
    await fill(again, 8)
    assert [p.kind for p in verify_log(again.iter_all(), exported).problems] == ["rewritten"]


# -- the bounded check at start --------------------------------------------------------------


async def test_the_check_at_start_resumes_after_its_checkpoint(opener: Opener) -> None:
    log = opener.open()
    await fill(log, 5)
    report, after = log.verify_since_checkpoint()
    assert (report.ok, report.entries_checked, after) == (True, 5, 0)
    await fill(log, 3)
    report, after = log.verify_since_checkpoint()
    assert (report.ok, report.entries_checked, after) == (True, 3, 5)
    report, after = log.verify_since_checkpoint()
    assert (report.ok, report.entries_checked, after) == (True, 0, 8)

    # Damage after the checkpoint is found by the bounded check.
    await fill(log, 2)
    audit_tamper.flip_body_byte(opener.path, 10)
    report, after = log.verify_since_checkpoint()
    assert not report.ok and after == 8
    assert [p.seq for p in report.problems] == [10]


async def test_a_changed_checkpoint_entry_makes_the_check_read_the_whole_log(opener: Opener) -> None:
    log = opener.open()
    await fill(log, 6)
    assert log.verify_since_checkpoint()[0].ok
    audit_tamper.flip_hash_byte(opener.path, 6)
    report, after = log.verify_since_checkpoint()
    assert after == 0 and report.entries_checked == 6 and not report.ok


async def test_damage_before_the_checkpoint_is_left_to_the_full_check(opener: Opener) -> None:
    """The bound is a choice: the full verifier (verify_local, `domicile audit verify`) still
    finds what the check at start no longer reads."""
    log = opener.open()
    await fill(log, 6)
    assert log.verify_since_checkpoint()[0].ok
    audit_tamper.flip_body_byte(opener.path, 2)
    assert log.verify_since_checkpoint()[0].ok
    assert not log.verify_local().ok


async def test_on_grown_hears_every_size_and_no_head_is_signed_for_it(tmp_path: Path) -> None:
    # The node's exporter signs a head only when it sends one: the writer tells it the size.
    signing_key, subject_key = load_or_create_keys(tmp_path / "keys")
    grown: list[int] = []

    def opened(**callbacks: object) -> AuditLog:
        log = AuditLog(
            tmp_path / f"audit-{len(callbacks)}-{sorted(callbacks)}.db",
            region=REGION,
            node_id=NODE,
            signing_key=signing_key,
            subject_key=subject_key,
            hlc=HybridClock().now,
            **callbacks,  # type: ignore[arg-type]
        )
        log.start()
        return log

    log = opened(on_grown=grown.append)
    try:
        for i in range(5):
            await log.record(principal="client:peer", action="put", detail=str(i))
        assert grown and grown == sorted(grown) and grown[-1] == log.size == 5
        assert log._signed is None
        # Signed on demand, it covers every entry.
        assert (
            verify_log(log.iter_all(), log.head(), trusted_public_key=log.head().public_key).anchored_size
            == 5
        )
    finally:
        await log.close()
    # Negative control: a listener for signed heads gets them signed by the writer.
    heads: list[SignedHead] = []
    signed = opened(on_head=heads.append)
    try:
        await signed.record(principal="client:peer", action="put")
        assert signed._signed is not None and heads[-1].size == 1
    finally:
        await signed.close()
