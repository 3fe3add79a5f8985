from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from domicile.errors import DataCorruption, FailedPrecondition, InvalidArgument, Unavailable
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
    # A key created after destruction is a new key: the old records stay unreadable.
    fresh = keyring.data_key("alice", "a", create=True)
    assert fresh is not None
    assert fresh != alice["a"]


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
