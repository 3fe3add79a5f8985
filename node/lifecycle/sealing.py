"""Encryption at rest of values that carry a subject id, under the subject's data key for the
namespace's retention class (so that an erasure can destroy the keys of what must go and keep
those of records under a legal obligation).

Values are sealed before they reach the store (local writes and replicated ones) and opened on
the way out (reads, exports, and before shipping to another region, which seals them under its
own keys: data keys never leave the region). The associated data binds a sealed value to its
namespace and key; the dot is not known before the engine assigns it, so it is not bound.
"""

from __future__ import annotations

import dataclasses

from domicile.causality import Version, sha256
from domicile.cluster import ClusterSpec
from node.crypto.envelope import is_sealed, open_sealed, record_aad, seal
from node.crypto.keyring import Keyring

DEFAULT_KEY_CLASS = "default"


def key_class(cluster: ClusterSpec, namespace: str) -> str:
    spec = cluster.find_namespace(namespace)
    return (spec.retention_class if spec is not None else "") or DEFAULT_KEY_CLASS


class Sealer:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def seal_value(
        self, cluster: ClusterSpec, namespace: str, key: str, subject_id: str, value: bytes
    ) -> bytes:
        if not subject_id:
            return value
        data_key = self.keyring.data_key(subject_id, key_class(cluster, namespace), create=True)
        if data_key is None:  # create=True always gives a key
            raise RuntimeError("keyring returned no key for create=True")
        return seal(data_key, value, record_aad(namespace, key, "", 0))

    def seal_version(self, cluster: ClusterSpec, namespace: str, key: str, v: Version) -> Version:
        if not v.subject_id or v.tombstone or is_sealed(v.value):
            return v
        sealed = self.seal_value(cluster, namespace, key, v.subject_id, v.value)
        return dataclasses.replace(v, value=sealed, checksum=sha256(sealed))

    def open_version(self, cluster: ClusterSpec, namespace: str, key: str, v: Version) -> Version | None:
        """The version with its value in clear; None when its data key was destroyed (the
        subject was erased: the value is gone for good)."""
        # Only values with a subject are ever sealed; anything else passes as it is, even a
        # value that happens to start like a sealed one.
        if v.tombstone or not v.subject_id or not is_sealed(v.value):
            return v
        data_key = self.keyring.data_key(v.subject_id, key_class(cluster, namespace), create=False)
        if data_key is None:
            return None
        plain = open_sealed(data_key, v.value, record_aad(namespace, key, "", 0))
        return dataclasses.replace(v, value=plain, checksum=sha256(plain))
