from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from domicile.errors import (
    DataCorruption,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from node.crypto import keyring as keyring_module
from node.crypto.keyring import (
    KEK_FILE,
    KEY_CLASSES_PER_SUBJECT_MAX,
    KEYRING_FILE,
    Keyring,
    load_or_create_kek,
)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def kek(tmp_path: Path) -> bytes:
    return load_or_create_kek(tmp_path / "kek")


@pytest.fixture
def keyring(store_dir: Path, kek: bytes) -> Iterator[Keyring]:
    with Keyring(store_dir / KEYRING_FILE, kek) as ring:
        yield ring


def raw_rows(path: Path) -> dict[tuple[str, str], bytes]:
    """The stored wrapped keys, read with a separate connection that is closed again (an open
    reader would keep the key store from clearing its WAL)."""
    conn = sqlite3.connect(path)
    try:
        return {(s, c): w for s, c, w in conn.execute("SELECT subject_id, key_class, wrapped FROM data_keys")}
    finally:
        conn.close()


def store_bytes(directory: Path) -> bytes:
    """Every byte of every file in the key store's directory (database, WAL, shared memory)."""
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


# -- the key-encryption key -------------------------------------------------------------------


def test_kek_is_created_once_private_and_reloaded(tmp_path: Path) -> None:
    kek = load_or_create_kek(tmp_path / "data")
    assert len(kek) == 32
    assert stat.S_IMODE((tmp_path / "data" / KEK_FILE).stat().st_mode) == 0o600
    assert load_or_create_kek(tmp_path / "data") == kek
    assert load_or_create_kek(tmp_path / "other") != kek


def test_kek_readable_by_others_or_damaged_is_refused(tmp_path: Path) -> None:
    load_or_create_kek(tmp_path)
    os.chmod(tmp_path / KEK_FILE, 0o640)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        load_or_create_kek(tmp_path)
    os.chmod(tmp_path / KEK_FILE, 0o600)
    (tmp_path / KEK_FILE).write_bytes(b"too short")
    with pytest.raises(FailedPrecondition, match="9 bytes; it must be 32"):
        load_or_create_kek(tmp_path)


# -- data keys --------------------------------------------------------------------------------


def test_keys_are_created_on_demand_and_persist_across_reopen(store_dir: Path, kek: bytes) -> None:
    path = store_dir / KEYRING_FILE
    with Keyring(path, kek) as ring:
        assert ring.data_key("alice", "user_data", create=False) is None
        alice = ring.data_key("alice", "user_data", create=True)
        assert alice is not None
        assert len(alice) == 32
        assert ring.data_key("alice", "user_data", create=False) == alice
        assert ring.data_key("alice", "user_data", create=True) == alice
        trades = ring.data_key("alice", "transaction_data", create=True)
        bob = ring.data_key("bob", "user_data", create=True)
        assert len({alice, trades, bob}) == 3
        assert ring.key_classes("alice") == ["transaction_data", "user_data"]
        assert ring.key_classes("nobody") == []
    with Keyring(path, kek) as again:
        assert again.data_key("alice", "user_data", create=False) == alice
        assert again.data_key("alice", "transaction_data", create=False) == trades
        assert again.data_key("bob", "user_data", create=False) == bob
    # The data keys are stored wrapped, never in clear.
    files = store_bytes(store_dir)
    for key in (alice, trades, bob):
        assert key is not None
        assert key not in files


def test_key_store_files_are_private(store_dir: Path, keyring: Keyring) -> None:
    keyring.data_key("alice", "user_data", create=True)
    files = list(store_dir.iterdir())
    assert {p.name for p in files} >= {KEYRING_FILE, KEYRING_FILE + "-wal"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name


def test_a_key_store_readable_by_others_is_refused(store_dir: Path, kek: bytes) -> None:
    Keyring(store_dir / KEYRING_FILE, kek).close()
    os.chmod(store_dir / KEYRING_FILE, 0o644)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        Keyring(store_dir / KEYRING_FILE, kek)


def test_a_file_that_is_not_a_key_store_is_refused(store_dir: Path, kek: bytes) -> None:
    store_dir.mkdir()
    path = store_dir / KEYRING_FILE
    path.write_bytes(b"this is not a database file " * 100)
    os.chmod(path, 0o600)
    with pytest.raises(FailedPrecondition, match="not a usable key store"):
        Keyring(path, kek)


def test_cache_is_bounded(store_dir: Path, kek: bytes) -> None:
    with Keyring(store_dir / KEYRING_FILE, kek, cache_entries_max=3) as ring:
        keys = {f"s{i}": ring.data_key(f"s{i}", "user_data", create=True) for i in range(10)}
        assert ring.cached_keys == 3
        for subject, key in keys.items():
            assert ring.data_key(subject, "user_data", create=False) == key
        assert ring.cached_keys == 3


# -- destruction ------------------------------------------------------------------------------


def test_destroy_returns_counts_and_the_keys_are_gone(keyring: Keyring) -> None:
    alice = {c: keyring.data_key("alice", c, create=True) for c in ("a", "b", "c")}
    bob = keyring.data_key("bob", "a", create=True)
    assert keyring.destroy("alice", ["a"]) == 1
    assert keyring.data_key("alice", "a", create=False) is None
    assert keyring.destroy("alice", ["a", "never"]) == 0
    assert keyring.key_classes("alice") == ["b", "c"]
    assert keyring.data_key("alice", "b", create=False) == alice["b"]
    assert keyring.destroy("alice") == 2
    assert keyring.key_classes("alice") == []
    for c in ("a", "b", "c"):
        assert keyring.data_key("alice", c, create=False) is None
    assert keyring.destroy("alice") == 0
    assert keyring.data_key("bob", "a", create=False) == bob
    # A destroyed key is never created again (see the regression tests below).
    with pytest.raises(FailedPrecondition, match="destroyed by an erasure"):
        keyring.data_key("alice", "a", create=True)


def test_regression_a_destroyed_key_is_never_created_again(store_dir: Path, kek: bytes) -> None:
    # A write already past the erasure block when the erasure ran used to create a fresh key
    # and store the subject's data again, readable, after the erasure reported it gone.
    with Keyring(store_dir / KEYRING_FILE, kek) as ring:
        ring.data_key("alice", "user_data", create=True)
        ring.data_key("alice", "logs", create=True)
        assert ring.destroy("alice", ["user_data", "cache"]) == 1
        for klass in ("user_data", "cache"):  # "cache" had no key: it is marked all the same
            with pytest.raises(FailedPrecondition, match=f"class '{klass}' was destroyed"):
                ring.data_key("alice", klass, create=True)
        assert ring.data_key("alice", "logs", create=True) is not None  # kept: not destroyed
        assert ring.data_key("bob", "user_data", create=True) is not None
    with Keyring(store_dir / KEYRING_FILE, kek) as again:  # the marker is durable
        with pytest.raises(FailedPrecondition):
            again.data_key("alice", "user_data", create=True)
        assert again.destroy("alice") == 1
        with pytest.raises(FailedPrecondition):
            again.data_key("alice", "a-class-never-seen", create=True)


def test_destroyed_key_markers_hold_no_subject_id(store_dir: Path, kek: bytes) -> None:
    with Keyring(store_dir / KEYRING_FILE, kek) as ring:
        ring.data_key("subject-8c1f", "user_data", create=True)
        ring.destroy("subject-8c1f")
    assert b"subject-8c1f" not in store_bytes(store_dir)


def test_a_version_1_key_store_is_upgraded_and_keeps_its_keys(store_dir: Path, kek: bytes) -> None:
    path = store_dir / KEYRING_FILE
    with Keyring(path, kek) as ring:
        key = ring.data_key("alice", "user_data", create=True)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE destroyed_keys")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Keyring(path, kek) as ring:
        assert ring.data_key("alice", "user_data", create=False) == key
        ring.destroy("alice")
        with pytest.raises(FailedPrecondition):
            ring.data_key("alice", "user_data", create=True)


def test_the_all_classes_marker_is_not_a_key_class(keyring: Keyring) -> None:
    with pytest.raises(InvalidArgument, match="reserved"):
        keyring.data_key("alice", "*", create=True)


def test_destroyed_keys_are_in_no_file_of_the_key_store(store_dir: Path, kek: bytes) -> None:
    path = store_dir / KEYRING_FILE
    classes = ("user_data", "transaction_data", "logs")
    # Enough keys to fill many pages, so that destruction also meets split and merged pages;
    # the WAL is never checkpointed before destroy, so the keys are in its frames too.
    with Keyring(path, kek) as ring:
        for i in range(600):
            for c in classes:
                ring.data_key(f"subject-{i:04d}", c, create=True)
        rows = raw_rows(path)
        assert len(rows) == 600 * len(classes)
        before = store_bytes(store_dir)
        assert all(w in before for w in rows.values())
        victims = {ident: w for ident, w in rows.items() if int(ident[0][-4:]) % 3 == 0}
        partial = {ident: w for ident, w in rows.items() if int(ident[0][-4:]) % 3 == 1}
        for i in range(0, 600, 3):
            assert ring.destroy(f"subject-{i:04d}") == len(classes)
        for i in range(1, 600, 3):
            assert ring.destroy(f"subject-{i:04d}", ["logs"]) == 1
        gone = {**victims, **{ident: w for ident, w in partial.items() if ident[1] == "logs"}}
        kept = {ident: w for ident, w in rows.items() if ident not in gone}
        after = store_bytes(store_dir)
        assert (store_dir / (KEYRING_FILE + "-wal")).stat().st_size == 0
        leaked = [ident for ident, w in gone.items() if w in after or w[-32:] in after]
        assert leaked == []
        # The search does find keys that still exist (the check above is not vacuous).
        assert all(w in after for w in kept.values())
    with Keyring(path, kek) as again:
        assert again.data_key("subject-0000", "user_data", create=False) is None
        assert again.data_key("subject-0001", "logs", create=False) is None
        assert again.data_key("subject-0001", "user_data", create=False) is not None


# -- unwrap failures --------------------------------------------------------------------------


def test_another_kek_cannot_unwrap(store_dir: Path, kek: bytes, tmp_path: Path) -> None:
    path = store_dir / KEYRING_FILE
    with Keyring(path, kek) as ring:
        ring.data_key("alice", "user_data", create=True)
    stored = raw_rows(path)
    other = load_or_create_kek(tmp_path / "other-kek")
    with Keyring(path, other) as wrong:
        with pytest.raises(DataCorruption, match="key-encryption key"):
            wrong.data_key("alice", "user_data", create=False)
        # Never replaced by a new key: the old one may still be recovered with the right KEK.
        with pytest.raises(DataCorruption):
            wrong.data_key("alice", "user_data", create=True)
    assert raw_rows(path) == stored


def test_damaged_or_moved_rows_are_data_corruption(store_dir: Path, kek: bytes) -> None:
    path = store_dir / KEYRING_FILE
    with Keyring(path, kek) as ring:
        for subject in ("alice", "bob", "carol"):
            ring.data_key(subject, "user_data", create=True)
    rows = raw_rows(path)
    flipped = bytearray(rows[("alice", "user_data")])
    flipped[20] ^= 0x80
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE data_keys SET wrapped = ? WHERE subject_id = 'alice'", (bytes(flipped),))
        # A row copied to another subject does not unwrap there (the subject is authenticated).
        conn.execute(
            "UPDATE data_keys SET wrapped = ? WHERE subject_id = 'bob'", (rows[("carol", "user_data")],)
        )
        conn.execute("UPDATE data_keys SET wrapped = x'0102' WHERE subject_id = 'carol'")
    conn.close()
    with Keyring(path, kek) as ring:
        for subject in ("alice", "bob", "carol"):
            with pytest.raises(DataCorruption):
                ring.data_key(subject, "user_data", create=False)


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_callers_create_one_key_per_subject_and_class(store_dir: Path, kek: bytes) -> None:
    path = store_dir / KEYRING_FILE
    idents = [(f"subject-{s}", c) for s in range(5) for c in ("user_data", "logs")]
    threads_count = 8
    # Two keyrings on one file stand for two connections (as two processes would have).
    rings = [Keyring(path, kek), Keyring(path, kek)]
    start = threading.Barrier(threads_count)
    seen: list[dict[tuple[str, str], bytes | None]] = [{} for _ in range(threads_count)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        ring = rings[index % 2]
        try:
            start.wait()
            # Each thread walks the keys in a different order, so that they collide.
            for ident in idents[index:] + idents[:index]:
                seen[index][ident] = ring.data_key(*ident, create=True)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ring in rings:
        ring.close()
    assert errors == []
    for ident in idents:
        keys = {s[ident] for s in seen}
        assert len(keys) == 1, ident
        assert None not in keys
    assert sorted(raw_rows(path)) == sorted(idents)


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_is_refused_and_changes_nothing(store_dir: Path, keyring: Keyring, kek: bytes) -> None:
    path = store_dir / KEYRING_FILE
    keyring.data_key("alice", "user_data", create=True)
    stored = raw_rows(path)
    bad_calls = [
        (lambda: keyring.data_key("", "user_data", create=True), "subject id is 0 bytes"),
        (lambda: keyring.data_key("x" * 257, "user_data", create=True), "257 bytes"),
        (lambda: keyring.data_key("a\x00b", "user_data", create=True), "NUL"),
        (lambda: keyring.data_key("\ud800", "user_data", create=True), "surrogate"),
        (lambda: keyring.data_key("alice", "", create=True), "invalid key class"),
        (lambda: keyring.data_key("alice", "bad\nclass", create=True), "printable"),
        (lambda: keyring.data_key("alice", "c" * 129, create=True), "1 to 128 bytes"),
        (lambda: keyring.destroy("alice", "user_data"), "single string"),
        (lambda: keyring.destroy("alice", [""]), "invalid key class"),
        (lambda: keyring.destroy(""), "subject id"),
        (lambda: keyring.key_classes(""), "subject id"),
        (lambda: Keyring(path, kek[:16]), "16 bytes; it must be 32"),
        (lambda: Keyring(path, kek, cache_entries_max=0), "cache_entries_max is 0"),
    ]
    for call, message in bad_calls:
        with pytest.raises(InvalidArgument, match=message):
            call()
    assert raw_rows(path) == stored


def test_key_classes_per_subject_are_limited(keyring: Keyring) -> None:
    for i in range(KEY_CLASSES_PER_SUBJECT_MAX):
        keyring.data_key("alice", f"class-{i:02d}", create=True)
    with pytest.raises(FailedPrecondition, match="most allowed"):
        keyring.data_key("alice", "one-too-many", create=True)
    assert len(keyring.key_classes("alice")) == KEY_CLASSES_PER_SUBJECT_MAX
    assert keyring.data_key("bob", "class-00", create=True) is not None


def test_a_closed_keyring_refuses(store_dir: Path, kek: bytes) -> None:
    ring = Keyring(store_dir / KEYRING_FILE, kek)
    ring.data_key("alice", "user_data", create=True)
    ring.close()
    ring.close()
    with pytest.raises(Unavailable, match="closed"):
        ring.data_key("alice", "user_data", create=False)
    with pytest.raises(Unavailable, match="closed"):
        ring.destroy("alice")
    with pytest.raises(Unavailable, match="closed"):
        ring.key_classes("alice")


# -- the writer thread ------------------------------------------------------------------------


class ParkedWriter:
    """A keyring whose writer thread, once park() is called, parks after its next batch until
    released, so that the writes put meanwhile wait in its queue; records every batch's size."""

    def __init__(self, path: Path, kek: bytes, **options: int) -> None:
        self.sizes: list[int] = []
        self.armed = threading.Event()
        self.parked = threading.Event()
        self.release = threading.Event()
        self.ring = Keyring(path, kek, on_batch=self.observe, **options)

    def observe(self, size: int, seconds: float) -> None:
        self.sizes.append(size)
        if self.armed.is_set() and not self.parked.is_set():
            self.parked.set()
            self.release.wait(timeout=30)

    def park(self) -> None:
        self.armed.set()
        self.ring.data_key("parking", "user_data", create=True)
        assert self.parked.wait(timeout=30)


class Caller(threading.Thread):
    """One blocking keyring call on its own thread (as the offload pool makes them)."""

    def __init__(self, call: Callable[[], object]) -> None:
        super().__init__()
        self.call = call
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as error:
            self.error = error

    def outcome(self) -> object:
        self.join(timeout=30)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


def started(call: Callable[[], object]) -> Caller:
    caller = Caller(call)
    caller.start()
    return caller


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


@pytest.fixture
def parked(store_dir: Path, kek: bytes) -> Iterator[ParkedWriter]:
    writer = ParkedWriter(store_dir / KEYRING_FILE, kek)
    yield writer
    writer.release.set()
    writer.ring.close()


def test_new_keys_that_wait_together_are_committed_in_one_transaction(
    store_dir: Path, parked: ParkedWriter
) -> None:
    ring = parked.ring
    parked.park()
    callers = [started(lambda i=i: ring.data_key(f"subject-{i}", "user_data", create=True)) for i in range(8)]
    wait_for(lambda: ring.queued_keys == 8)
    parked.release.set()
    keys = [caller.outcome() for caller in callers]
    assert len(set(keys)) == 8
    # on_batch runs once the batch's callers are answered.
    wait_for(lambda: len(parked.sizes) == 2)
    assert parked.sizes == [1, 8]
    assert (ring.batches_committed, ring.keys_created) == (2, 9)
    assert len(raw_rows(store_dir / KEYRING_FILE)) == 9
    for i, key in enumerate(keys):
        assert ring.data_key(f"subject-{i}", "user_data", create=False) == key


def test_callers_creating_the_same_key_together_get_one_key(store_dir: Path, parked: ParkedWriter) -> None:
    ring = parked.ring
    parked.park()
    callers = [started(lambda: ring.data_key("alice", "user_data", create=True)) for _ in range(6)]
    wait_for(lambda: ring.queued_keys == 6)
    parked.release.set()
    keys = {caller.outcome() for caller in callers}
    assert len(keys) == 1
    assert ring.keys_created == 2
    assert sorted(raw_rows(store_dir / KEYRING_FILE)) == [("alice", "user_data"), ("parking", "user_data")]
    assert ring.data_key("alice", "user_data", create=False) in keys


def test_writes_run_in_queue_order_around_a_destruction(
    store_dir: Path, kek: bytes, parked: ParkedWriter
) -> None:
    ring = parked.ring
    parked.park()
    before = started(lambda: ring.data_key("alice", "user_data", create=True))
    wait_for(lambda: ring.queued_keys == 1)
    destroy = started(lambda: ring.destroy("alice"))
    wait_for(lambda: ring.queued_destructions == 1)
    after = started(lambda: ring.data_key("alice", "user_data", create=True))
    wait_for(lambda: ring.queued_keys == 2)
    parked.release.set()
    first, destroyed = before.outcome(), destroy.outcome()
    # The key created before the destruction is destroyed with it; the one asked for after it
    # is refused, never created again.
    assert destroyed == 1
    assert isinstance(first, bytes)
    with pytest.raises(FailedPrecondition, match="never created again"):
        after.outcome()
    wait_for(lambda: len(parked.sizes) == 4)
    assert parked.sizes == [1, 1, 1, 1]
    assert ring.data_key("alice", "user_data", create=False) is None
    ring.close()
    with Keyring(store_dir / KEYRING_FILE, kek) as again:
        assert again.data_key("alice", "user_data", create=False) is None


def test_reads_do_not_wait_for_the_writer(store_dir: Path, kek: bytes) -> None:
    writer = ParkedWriter(store_dir / KEYRING_FILE, kek, cache_entries_max=1)
    ring = writer.ring
    try:
        early = ring.data_key("early", "user_data", create=True)
        writer.park()
        assert ring.cached_keys == 1  # "early" was evicted by "parking": reading it is a miss
        pending = started(lambda: ring.data_key("late", "user_data", create=True))
        wait_for(lambda: ring.queued_keys == 1)
        # Cache misses, existing keys (even with create) and listings read on the caller's thread.
        assert ring.data_key("early", "user_data", create=False) == early
        assert ring.data_key("early", "user_data", create=True) == early
        assert ring.data_key("nobody", "user_data", create=False) is None
        assert ring.key_classes("early") == ["user_data"]
        assert pending.is_alive()
        writer.release.set()
        assert isinstance(pending.outcome(), bytes)
    finally:
        writer.release.set()
        ring.close()


def test_a_full_write_queue_refuses_at_once(store_dir: Path, kek: bytes) -> None:
    writer = ParkedWriter(store_dir / KEYRING_FILE, kek, queue_keys_max=2, queue_destructions_max=1)
    ring = writer.ring
    try:
        writer.park()
        creations = [started(lambda i=i: ring.data_key(f"s-{i}", "user_data", create=True)) for i in range(2)]
        destruction = started(lambda: ring.destroy("parking"))
        wait_for(lambda: (ring.queued_keys, ring.queued_destructions) == (2, 1))
        with pytest.raises(
            ResourceExhausted, match=r"key store's write queue is full \(2 new data keys waiting\)"
        ):
            ring.data_key("one-too-many", "user_data", create=True)
        with pytest.raises(ResourceExhausted, match=r"key store's write queue is full \(1 key destructions"):
            ring.destroy("s-0")
        writer.release.set()
        assert all(isinstance(caller.outcome(), bytes) for caller in creations)
        assert destruction.outcome() == 1
        assert ring.data_key("one-too-many", "user_data", create=False) is None
    finally:
        writer.release.set()
        ring.close()


def test_close_finishes_the_writes_already_accepted(store_dir: Path, kek: bytes) -> None:
    writer = ParkedWriter(store_dir / KEYRING_FILE, kek, queue_destructions_max=1)
    ring = writer.ring
    try:
        ring.data_key("doomed", "user_data", create=True)
        writer.park()
        creations = [started(lambda i=i: ring.data_key(f"s-{i}", "user_data", create=True)) for i in range(3)]
        destruction = started(lambda: ring.destroy("doomed"))
        wait_for(lambda: (ring.queued_keys, ring.queued_destructions) == (3, 1))
        closing = started(ring.close)

        def refused_as_closed() -> bool:
            # The destruction queue is full, so a destroy is refused either way, without
            # queueing: as full while the keyring runs, as closed once close() began.
            try:
                ring.destroy("probe")
            except ResourceExhausted:
                return False
            except Unavailable as error:
                assert "closed" in str(error)
                return True
            raise AssertionError("destroy was accepted")

        wait_for(refused_as_closed)
        with pytest.raises(Unavailable, match="closed"):
            ring.data_key("s-new", "user_data", create=True)
        writer.release.set()
        keys = [caller.outcome() for caller in creations]
        assert destruction.outcome() == 1
        closing.outcome()
        with pytest.raises(Unavailable, match="closed"):
            ring.data_key("s-0", "user_data", create=False)
    finally:
        writer.release.set()
        ring.close()
    with Keyring(store_dir / KEYRING_FILE, kek) as again:
        assert [again.data_key(f"s-{i}", "user_data", create=False) for i in range(3)] == keys
        assert again.key_classes("doomed") == []
        assert again.data_key("s-new", "user_data", create=False) is None


def test_keys_read_through_the_read_connection_are_destroyed_from_every_file(
    store_dir: Path, kek: bytes
) -> None:
    path = store_dir / KEYRING_FILE
    # A one-entry cache makes every read below a miss, served by the read connection, which
    # must not keep destroy's checkpoint from truncating the WAL.
    with Keyring(path, kek, cache_entries_max=1) as ring:
        for i in range(60):
            for c in ("user_data", "logs"):
                ring.data_key(f"subject-{i:02d}", c, create=True)
        rows = raw_rows(path)
        for (subject, c), _ in rows.items():
            assert ring.data_key(subject, c, create=False) is not None
            assert ring.key_classes(subject) == ["logs", "user_data"]
        for i in range(0, 60, 2):
            assert ring.destroy(f"subject-{i:02d}") == 2
            assert ring.data_key(f"subject-{i + 1:02d}", "logs", create=False) is not None
        assert (store_dir / (KEYRING_FILE + "-wal")).stat().st_size == 0
        after = store_bytes(store_dir)
        gone = {ident: w for ident, w in rows.items() if int(ident[0][-2:]) % 2 == 0}
        assert [ident for ident, w in gone.items() if w in after or w[-32:] in after] == []
        assert all(w in after for ident, w in rows.items() if ident not in gone)


def test_a_key_read_just_before_its_destruction_is_not_cached(
    monkeypatch: pytest.MonkeyPatch, store_dir: Path, kek: bytes
) -> None:
    with Keyring(store_dir / KEYRING_FILE, kek, cache_entries_max=1) as ring:
        alice = ring.data_key("alice", "user_data", create=True)
        bob = ring.data_key("bob", "user_data", create=True)  # evicts alice: reading her is a miss
        select_wrapped = keyring_module._select_wrapped
        raced = threading.Event()

        def read_then_destroy(conn: sqlite3.Connection, ident: tuple[str, str]) -> object | None:
            wrapped = select_wrapped(conn, ident)
            if ident == ("alice", "user_data") and not raced.is_set():
                raced.set()
                # The destruction lands between the read and the cache update.
                assert ring.destroy("alice") == 1
            return wrapped

        monkeypatch.setattr(keyring_module, "_select_wrapped", read_then_destroy)
        # The read came before the destruction, so it may still answer with the old key...
        assert ring.data_key("alice", "user_data", create=False) == alice
        assert raced.is_set()
        # ...but must not leave it cached after the destruction.
        assert ring.data_key("alice", "user_data", create=False) is None
        assert ring.data_key("bob", "user_data", create=False) == bob


def test_regression_destroying_no_class_still_truncates_the_wal(store_dir: Path, keyring: Keyring) -> None:
    """An erasure rerun after a destroy whose delete committed but whose WAL truncation failed
    finds no key class left to destroy; it calls destroy with none, which must still leave the
    WAL empty (the erasure now always calls it)."""
    keyring.data_key("s-1", "user_data", create=True)
    keyring.data_key("s-2", "user_data", create=True)
    assert (store_dir / (KEYRING_FILE + "-wal")).stat().st_size > 0
    assert keyring.destroy("s-1", []) == 0
    assert (store_dir / (KEYRING_FILE + "-wal")).stat().st_size == 0
    assert keyring.data_key("s-1", "user_data", create=False) is not None
