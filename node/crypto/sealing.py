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

Key lookups (a data key is created on a subject's first write in a class, which commits to the
key store) and AES-GCM run off the event loop, in node.offload.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from domicile.causality import Mutation, Version, sha256
from domicile.cluster import ClusterSpec
from domicile.errors import DataCorruption
from node.crypto.envelope import SEALED_OVERHEAD_BYTES, open_sealed, record_aad, seal
from node.crypto.keyring import Keyring
from node.offload import Offload

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


def answered_value_bytes(v: Version) -> int:
    """What a stored value weighs as a read answers it: a sealed value opened (its key-class
    header and envelope off)."""
    if v.tombstone or not v.subject_id or sealed_key_class(v.value) is None:
        return len(v.value)
    header = len(KEY_CLASS_TAG) + 1 + v.value[len(KEY_CLASS_TAG)]
    return max(0, len(v.value) - header - SEALED_OVERHEAD_BYTES)


def needs_opening(v: Version) -> bool:
    """Whether Sealer.open_version has work to do (a key lookup and AES-GCM) rather than return
    the version as it is: only a value with a subject, sealed here. Callers on the event loop
    skip their hop off it when no version needs opening."""
    return not v.tombstone and bool(v.subject_id) and sealed_key_class(v.value) is not None


def _aad(namespace: str, key: str, klass: str) -> bytes:
    return record_aad(namespace, key, klass, 0)


class Sealer:
    """Seals and opens stored values. The async methods do their key lookups and AES-GCM work
    in `offload` (one hop per call); open_version and the *_now methods block, for code that is
    already off the event loop."""

    def __init__(self, keyring: Keyring, offload: Offload | None = None) -> None:
        self.keyring = keyring
        self.offload = offload or Offload()

    def data_key_now(self, subject_id: str, klass: str) -> bytes:
        """The subject's key for the class, created on first use (a durable commit)."""
        key = self.keyring.data_key(subject_id, klass, create=True)
        if key is None:  # create=True always gives a key
            raise RuntimeError("the keyring returned no key for create=True")
        return key

    def seal_value_now(
        self, cluster: ClusterSpec, namespace: str, key: str, subject_id: str, value: bytes
    ) -> bytes:
        if not subject_id:
            return value
        klass = key_class(cluster, namespace)
        data_key = self.data_key_now(subject_id, klass)
        encoded = klass.encode("utf-8")
        if len(encoded) > 255:
            raise DataCorruption(f"key class {klass!r} is longer than 255 bytes")
        return (
            KEY_CLASS_TAG
            + bytes([len(encoded)])
            + encoded
            + seal(data_key, value, _aad(namespace, key, klass))
        )

    async def seal_value(
        self, cluster: ClusterSpec, namespace: str, key: str, subject_id: str, value: bytes
    ) -> bytes:
        if not subject_id:
            return value
        return await self.offload.run(self.seal_value_now, cluster, namespace, key, subject_id, value)

    def seal_version_now(self, cluster: ClusterSpec, namespace: str, key: str, v: Version) -> Version:
        """A replicated version, sealed for storage here. Replicated values are in clear by
        contract, so every one with a subject is sealed, whatever its bytes look like."""
        if not v.subject_id or v.tombstone:
            return v
        sealed = self.seal_value_now(cluster, namespace, key, v.subject_id, v.value)
        return dataclasses.replace(v, value=sealed, checksum=sha256(sealed))

    async def seal_mutations(self, cluster: ClusterSpec, mutations: Sequence[Mutation]) -> list[Mutation]:
        """Replicated mutations with their versions sealed for storage here, in one hop."""
        if not any(m.version.subject_id and not m.version.tombstone for m in mutations):
            return list(mutations)

        def seal_all() -> list[Mutation]:
            return [
                dataclasses.replace(m, version=self.seal_version_now(cluster, m.namespace, m.key, m.version))
                for m in mutations
            ]

        return await self.offload.run(seal_all)

    def open_version(self, namespace: str, key: str, v: Version) -> Version | None:
        """The version with its value in clear; None when its data key was destroyed (the
        subject was erased: the value is gone for good). Blocks: call it off the event loop."""
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
