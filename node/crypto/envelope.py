"""Sealed values: AES-256-GCM under a subject's data key, bound to the record they belong to.

Layout of a sealed value: MAGIC (3 bytes) + nonce (12 random bytes) + ciphertext + tag (16
bytes). Random nonces are safe here: a data key seals the values of one subject and class, far
below the 2**32 messages per key that random 96-bit nonces allow.

A value that does not start with MAGIC is not sealed and passes through open_version unchanged
(records without a subject, data written before encryption existed).
"""

from __future__ import annotations

import os
import struct
from dataclasses import replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domicile.causality import Version, sha256
from domicile.errors import DataCorruption, InvalidArgument

MAGIC = b"DX1"
NONCE_BYTES = 12
TAG_BYTES = 16
DATA_KEY_BYTES = 32
SEALED_OVERHEAD_BYTES = len(MAGIC) + NONCE_BYTES + TAG_BYTES
COUNTER_MAX = 2**64 - 1

_RECORD_AAD_PREFIX = b"domicile/record/v1\x00"


def seal(data_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """`plaintext` encrypted and authenticated under data_key, with `aad` authenticated too."""
    if len(data_key) != DATA_KEY_BYTES:
        raise InvalidArgument(f"the data key is {len(data_key)} bytes; it must be {DATA_KEY_BYTES}")
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(data_key).encrypt(nonce, plaintext, aad)


def is_sealed(value: bytes) -> bool:
    return len(value) >= SEALED_OVERHEAD_BYTES and value[: len(MAGIC)] == MAGIC


def open_sealed(data_key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext of a sealed value. DataCorruption when it cannot be opened: not a sealed
    value, a different key or associated data, or any changed byte."""
    if not is_sealed(sealed):
        raise DataCorruption(
            f"the stored value is not a sealed value (it must start with {MAGIC!r} and be at least "
            f"{SEALED_OVERHEAD_BYTES} bytes)"
        )
    if len(data_key) != DATA_KEY_BYTES:
        raise DataCorruption(f"the data key is {len(data_key)} bytes, not {DATA_KEY_BYTES}")
    start = len(MAGIC)
    nonce = sealed[start : start + NONCE_BYTES]
    try:
        return AESGCM(data_key).decrypt(nonce, sealed[start + NONCE_BYTES :], aad)
    except InvalidTag:
        raise DataCorruption(
            "a sealed value failed authentication: it was changed, moved to another record or "
            "version, or sealed under another data key"
        ) from None


def record_aad(namespace: str, key: str, node_id: str, counter: int) -> bytes:
    """Associated data binding a sealed value to its record and version (its dot), so that a
    ciphertext copied to another record or version does not open."""
    if not 0 <= counter <= COUNTER_MAX:
        raise InvalidArgument(f"dot counter is {counter}; it must be 0..{COUNTER_MAX}")
    parts = [_field(namespace), _field(key), _field(node_id)]
    # Every field is length-prefixed, so no two different records give the same bytes.
    return b"".join([_RECORD_AAD_PREFIX, *parts, struct.pack(">Q", counter)])


def seal_version(v: Version, namespace: str, key: str, data_key: bytes) -> Version:
    """v with its value sealed (bound to namespace, key and v.dot) and the checksum of the
    sealed value: the store checks what it stores. Tombstones carry no value and stay as they
    are."""
    if v.tombstone:
        return v
    if v.checksum and not v.checksum_ok():
        # Sealing would give the damaged value a fresh, valid checksum.
        raise DataCorruption(
            f"{namespace}/{key}: the value does not match its checksum before sealing; it was not stored"
        )
    sealed = seal(data_key, v.value, record_aad(namespace, key, v.dot.node_id, v.dot.counter))
    return replace(v, value=sealed, checksum=sha256(sealed))


def open_version(v: Version, namespace: str, key: str, data_key: bytes) -> Version:
    """v with its value opened and the checksum of the plaintext (what clients check). A
    version whose value is not sealed is returned unchanged."""
    if v.tombstone or not is_sealed(v.value):
        return v
    plain = open_sealed(data_key, v.value, record_aad(namespace, key, v.dot.node_id, v.dot.counter))
    return replace(v, value=plain, checksum=sha256(plain))


def _field(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(data)) + data
