"""Encryption at rest of values that carry a subject id, under the subject's data key for the
namespace's retention class (so that an erasure can destroy the keys of what must go and keep
those of records under a legal obligation).

Values are sealed before they reach the store (local writes and replicated ones) and opened on
the way out (reads, exports, and before shipping to another region, which seals them under its
own keys: data keys never leave the region). A stored value is

    KEY_CLASS_TAG + len(key class) + key class + envelope (node/crypto/envelope.py)

so it is always opened with the key it was sealed under, even after its namespace's retention
class changes. The associated data binds the value to its namespace, key and key class; the
dot is not known before the engine assigns it, so it is not bound.

Data keys are created on a subject's first write in a class: that commits to the key store, so
it runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses

from domicile.causality import Version, sha256
from domicile.cluster import ClusterSpec
from domicile.errors import DataCorruption
from node.crypto.envelope import open_sealed, record_aad, seal
from node.crypto.keyring import Keyring

DEFAULT_KEY_CLASS = "default"
KEY_CLASS_TAG = b"DS1"


def key_class(cluster: ClusterSpec, namespace: str) -> str:
    spec = cluster.find_namespace(namespace)
    return (spec.retention_class if spec is not None else "") or DEFAULT_KEY_CLASS


def sealed_key_class(value: bytes) -> str | None:
    """The key class a stored value is sealed under, or None when it is not sealed."""
    if len(value) < len(KEY_CLASS_TAG) + 1 or value[: len(KEY_CLASS_TAG)] != KEY_CLASS_TAG:
        return None
    size = value[len(KEY_CLASS_TAG)]
    start = len(KEY_CLASS_TAG) + 1
    if len(value) < start + size:
        return None
    return value[start : start + size].decode("utf-8", "replace")


def _aad(namespace: str, key: str, klass: str) -> bytes:
    return record_aad(namespace, key, klass, 0)


class Sealer:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def data_key(self, subject_id: str, klass: str) -> bytes:
        """The subject's key for the class, created (in a worker thread) on first use."""
        cached = self.keyring.data_key(subject_id, klass, create=False)
        if cached is not None:
            return cached
        created = await asyncio.to_thread(self.keyring.data_key, subject_id, klass, create=True)
        if created is None:  # create=True always gives a key
            raise RuntimeError("the keyring returned no key for create=True")
        return created

    async def seal_value(
        self, cluster: ClusterSpec, namespace: str, key: str, subject_id: str, value: bytes
    ) -> bytes:
        if not subject_id:
            return value
        klass = key_class(cluster, namespace)
        data_key = await self.data_key(subject_id, klass)
        encoded = klass.encode("utf-8")
        if len(encoded) > 255:
            raise DataCorruption(f"key class {klass!r} is longer than 255 bytes")
        return (
            KEY_CLASS_TAG
            + bytes([len(encoded)])
            + encoded
            + seal(data_key, value, _aad(namespace, key, klass))
        )

    async def seal_version(self, cluster: ClusterSpec, namespace: str, key: str, v: Version) -> Version:
        """A replicated version, sealed for storage here. Replicated values are in clear by
        contract, so every one with a subject is sealed, whatever its bytes look like."""
        if not v.subject_id or v.tombstone:
            return v
        sealed = await self.seal_value(cluster, namespace, key, v.subject_id, v.value)
        return dataclasses.replace(v, value=sealed, checksum=sha256(sealed))

    def open_version(self, namespace: str, key: str, v: Version) -> Version | None:
        """The version with its value in clear; None when its data key was destroyed (the
        subject was erased: the value is gone for good)."""
        if v.tombstone or not v.subject_id:
            return v
        klass = sealed_key_class(v.value)
        if klass is None:
            return v  # written before encryption at rest
        data_key = self.keyring.data_key(v.subject_id, klass, create=False)
        if data_key is None:
            return None
        start = len(KEY_CLASS_TAG) + 1 + len(klass.encode("utf-8"))
        plain = open_sealed(data_key, v.value[start:], _aad(namespace, key, klass))
        return dataclasses.replace(v, value=plain, checksum=sha256(plain))
