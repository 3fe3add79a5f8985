"""Sealing subject values at rest: the key class travels with the value."""

from __future__ import annotations

from pathlib import Path

from domicile.causality import Dot, Version, sha256
from domicile.cluster import ClusterSpec, NamespaceSpec
from node.crypto.keyring import Keyring, load_or_create_kek
from node.crypto.sealing import Sealer, sealed_key_class


def cluster(retention_class: str) -> ClusterSpec:
    return ClusterSpec(
        namespaces=(NamespaceSpec("customers", is_global=True, retention_class=retention_class),)
    )


async def test_regression_a_value_opens_after_its_namespace_changes_retention_class(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys.sqlite3", load_or_create_kek(tmp_path))
    try:
        sealer = Sealer(keyring)
        sealed = await sealer.seal_value(cluster("user_data"), "customers", "k", "s-1", b"profile")
        assert sealed_key_class(sealed) == "user_data"
        stored = Version(Dot("n", 1), sealed, 1 << 16, subject_id="s-1", checksum=sha256(sealed))
        # The namespace now declares another class: the value still opens under its own key.
        opened = sealer.open_version("customers", "k", stored)
        assert opened is not None and opened.value == b"profile" and opened.checksum == sha256(b"profile")
        assert (await sealer.seal_value(cluster("transaction_data"), "customers", "k", "s-1", b"x"))[
            :3
        ] == b"DS1"
        keyring.destroy("s-1", ["user_data"])
        assert sealer.open_version("customers", "k", stored) is None
    finally:
        keyring.close()


async def test_values_without_a_subject_are_never_sealed(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys.sqlite3", load_or_create_kek(tmp_path))
    try:
        sealer = Sealer(keyring)
        assert await sealer.seal_value(cluster("user_data"), "customers", "k", "", b"public") == b"public"
        plain = Version(Dot("n", 1), b"DS1 looks sealed", 1 << 16, checksum=sha256(b"DS1 looks sealed"))
        assert sealer.open_version("customers", "k", plain) is plain
    finally:
        keyring.close()
