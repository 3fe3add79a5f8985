from __future__ import annotations

import secrets
from dataclasses import replace

import pytest

from domicile.causality import Dot, Version, sha256
from domicile.errors import DataCorruption, InvalidArgument
from domicile.model import Classification
from node.crypto.envelope import (
    MAGIC,
    SEALED_OVERHEAD_BYTES,
    is_sealed,
    open_sealed,
    open_version,
    record_aad,
    seal,
    seal_version,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
DOT = Dot("eu-west-1-a", 7)
AAD = record_aad("accounts", "alice", DOT.node_id, DOT.counter)


def version(value: bytes = b"balance=100") -> Version:
    return Version(
        dot=DOT,
        value=value,
        hlc=123_456,
        content_type="text/plain",
        subject_id="subject-1",
        subject_jurisdiction="DE",
        classification=Classification.PERSONAL,
        checksum=sha256(value),
        origin_region="eu-west-1",
    )


# -- seal / open ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext", [b"", b"x", b"DX1 looks sealed but is not", secrets.token_bytes(1 << 20)]
)
def test_round_trip(plaintext: bytes) -> None:
    sealed = seal(KEY, plaintext, AAD)
    assert sealed.startswith(MAGIC)
    assert len(sealed) == len(plaintext) + SEALED_OVERHEAD_BYTES
    assert is_sealed(sealed)
    assert open_sealed(KEY, sealed, AAD) == plaintext


def test_sealing_twice_gives_different_ciphertexts() -> None:
    # A fresh nonce per seal: equal values do not give equal ciphertexts.
    assert seal(KEY, b"same", AAD) != seal(KEY, b"same", AAD)


def test_wrong_key_is_data_corruption() -> None:
    sealed = seal(KEY, b"secret", AAD)
    with pytest.raises(DataCorruption, match="authentication"):
        open_sealed(OTHER_KEY, sealed, AAD)


def test_wrong_aad_is_data_corruption() -> None:
    sealed = seal(KEY, b"secret", AAD)
    with pytest.raises(DataCorruption):
        open_sealed(KEY, sealed, record_aad("accounts", "alice", "eu-west-1-a", 8))
    with pytest.raises(DataCorruption):
        open_sealed(KEY, sealed, record_aad("accounts", "bob", "eu-west-1-a", 7))


def test_every_flipped_byte_is_data_corruption() -> None:
    sealed = seal(KEY, b"0123456789", AAD)
    for index in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[index] ^= 0x01
        with pytest.raises(DataCorruption):
            open_sealed(KEY, bytes(damaged), AAD)


def test_truncated_or_unsealed_values_are_data_corruption() -> None:
    sealed = seal(KEY, b"0123456789", AAD)
    for cut in (0, 1, len(MAGIC), SEALED_OVERHEAD_BYTES - 1, len(sealed) - 1):
        with pytest.raises(DataCorruption):
            open_sealed(KEY, sealed[:cut], AAD)
    with pytest.raises(DataCorruption, match="not a sealed value"):
        open_sealed(KEY, b"plain text, never sealed, long enough to look", AAD)


def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="16 bytes; it must be 32"):
        seal(KEY[:16], b"x", AAD)
    with pytest.raises(DataCorruption):
        open_sealed(KEY[:16], seal(KEY, b"x", AAD), AAD)


def test_is_sealed() -> None:
    assert not is_sealed(b"")
    assert not is_sealed(b"hello world, this is a plain value")
    assert not is_sealed(MAGIC + b"short")
    assert is_sealed(MAGIC + bytes(SEALED_OVERHEAD_BYTES - len(MAGIC)))


# -- associated data --------------------------------------------------------------------------


def test_record_aad_tells_every_record_and_dot_apart() -> None:
    aads = [
        record_aad("ab", "c", "n", 1),
        record_aad("a", "bc", "n", 1),
        record_aad("a", "b", "cn", 1),
        record_aad("a", "bcn", "", 1),
        record_aad("ab", "c", "n", 2),
        record_aad("ab", "c", "m", 1),
        record_aad("ab", "c", "", 0),
    ]
    assert len(set(aads)) == len(aads)
    assert record_aad("ab", "c", "n", 1) == aads[0]


def test_record_aad_refuses_counters_out_of_range() -> None:
    with pytest.raises(InvalidArgument, match="counter"):
        record_aad("ns", "k", "n", -1)
    with pytest.raises(InvalidArgument, match="counter"):
        record_aad("ns", "k", "n", 2**64)


# -- versions ---------------------------------------------------------------------------------


def test_seal_version_checksums_what_is_stored_and_open_version_what_clients_check() -> None:
    plain = version()
    sealed = seal_version(plain, "accounts", "alice", KEY)
    assert is_sealed(sealed.value)
    assert sealed.checksum == sha256(sealed.value)
    assert sealed.checksum_ok()
    # Only the value and its checksum change.
    assert replace(sealed, value=plain.value, checksum=plain.checksum) == plain
    opened = open_version(sealed, "accounts", "alice", KEY)
    assert opened == plain
    assert opened.checksum == sha256(b"balance=100")


def test_a_sealed_version_does_not_open_under_another_record_or_dot() -> None:
    sealed = seal_version(version(), "accounts", "alice", KEY)
    with pytest.raises(DataCorruption):
        open_version(sealed, "accounts", "bob", KEY)
    with pytest.raises(DataCorruption):
        open_version(sealed, "orders", "alice", KEY)
    with pytest.raises(DataCorruption):
        open_version(replace(sealed, dot=Dot("eu-west-1-a", 8)), "accounts", "alice", KEY)
    with pytest.raises(DataCorruption):
        open_version(replace(sealed, dot=Dot("eu-central-1-a", 7)), "accounts", "alice", KEY)
    with pytest.raises(DataCorruption):
        open_version(sealed, "accounts", "alice", OTHER_KEY)


def test_unsealed_values_and_tombstones_pass_through() -> None:
    plain = version(b"written before encryption existed")
    assert open_version(plain, "accounts", "alice", KEY) is plain
    tombstone = replace(version(b""), tombstone=True)
    assert seal_version(tombstone, "accounts", "alice", KEY) is tombstone
    assert open_version(tombstone, "accounts", "alice", KEY) is tombstone


def test_a_value_that_does_not_match_its_checksum_is_not_sealed() -> None:
    damaged = replace(version(), value=b"balance=999")
    with pytest.raises(DataCorruption, match="checksum"):
        seal_version(damaged, "accounts", "alice", KEY)


def test_an_empty_value_round_trips() -> None:
    empty = version(b"")
    sealed = seal_version(empty, "accounts", "alice", KEY)
    assert is_sealed(sealed.value)
    assert open_version(sealed, "accounts", "alice", KEY) == empty
