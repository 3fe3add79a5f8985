"""The audit-head key a node certificate binds.

A node signs the heads of its region's audit log with an Ed25519 key, and the coordinator keeps
those heads out of the region's control. Which key may sign a region's heads is decided by the
CA, not by whoever exports first: `domicile certs issue --node` writes the key beside the
certificate (`<stem>.audit.key`, kept when the certificate is re-issued) and puts its public key
into the certificate, in a non-critical extension of its own (AUDIT_KEY_OID). The coordinator
accepts a head only when its key is the one the exporting node's certificate binds, the first
head included. A TLS stack that does not know the extension ignores it (it is not critical).

The extension's value is the DER OCTET STRING of the raw 32-byte public key.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.errors import FailedPrecondition, InvalidArgument
from domicile.identity.files import PRIVATE_MODE, check_owner_only, read_file, write_atomically

# A UUID-derived OID (ITU-T X.667, arc 2.25): unique without a registry.
AUDIT_KEY_OID = x509.ObjectIdentifier("2.25.243146154871695340386748190450712024124")
PUBLIC_KEY_BYTES = 32
_OCTET_STRING_32 = bytes([0x04, PUBLIC_KEY_BYTES])
AUDIT_KEY_SUFFIX = ".audit.key"
# Where a node without a bound key (an insecure one) keeps its audit-head key: its data directory.
DATA_DIR_KEY_FILE = "audit-signing.key"


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def extension(public_key: bytes) -> x509.UnrecognizedExtension:
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise InvalidArgument(
            f"an audit-head key is {PUBLIC_KEY_BYTES} bytes (Ed25519), not {len(public_key)}"
        )
    return x509.UnrecognizedExtension(AUDIT_KEY_OID, _OCTET_STRING_32 + public_key)


def bound_key(certificate: x509.Certificate) -> bytes | None:
    """The audit-head public key the certificate binds; None when it binds none or a malformed one."""
    try:
        value = certificate.extensions.get_extension_for_oid(AUDIT_KEY_OID).value
    except x509.ExtensionNotFound:
        return None
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if len(raw) != len(_OCTET_STRING_32) + PUBLIC_KEY_BYTES or not raw.startswith(_OCTET_STRING_32):
        return None
    return raw[len(_OCTET_STRING_32) :]


def key_path(certificate_path: Path) -> Path:
    """Where `domicile certs issue --node` writes the key a certificate binds: beside it."""
    return certificate_path.with_name(certificate_path.stem + AUDIT_KEY_SUFFIX)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted PEM PKCS8 Ed25519 private key, readable by its owner only."""
    data = read_file(path, "audit-head key")
    check_owner_only(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise InvalidArgument(
            f"audit-head key {path} is not an unencrypted PEM PKCS8 key ({error})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"audit-head key {path} holds a {type(key).__name__}; audit heads are Ed25519")
    return key


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The key at `path`, made (mode 0600) when there is none: re-issuing keeps the key."""
    if path.exists():
        return load_key(path)
    key = Ed25519PrivateKey.generate()
    write_atomically(path, private_pem(key), PRIVATE_MODE, overwrite=False)
    return key


def signing_key(
    certificate: x509.Certificate, certificate_path: Path, candidates: list[Path]
) -> Ed25519PrivateKey:
    """The private key of the audit-head key `certificate` binds: the first of
    `<stem>.audit.key` beside it and `candidates` that holds it. FailedPrecondition naming the
    files when the certificate binds no key or none of them holds it (a node must not sign heads
    the coordinator will refuse)."""
    bound = bound_key(certificate)
    if bound is None:
        raise FailedPrecondition(
            f"certificate {certificate_path} binds no audit-head key; re-issue it with "
            "`domicile certs issue --node` (which writes the key beside it), or with --audit-key FILE "
            "to bind a key the node has signed with before"
        )
    paths = [key_path(certificate_path), *candidates]
    for path in paths:
        if path.exists():
            key = load_key(path)
            if public_bytes(key) == bound:
                return key
    raise FailedPrecondition(
        f"none of {', '.join(str(p) for p in paths)} holds the audit-head key certificate "
        f"{certificate_path} binds ({bound.hex()[:16]}...); put that key beside the certificate as "
        f"{key_path(certificate_path).name}"
    )
