"""Revoked certificates: the cluster's certificate revocation list (CRL), `ca.crl` beside `ca.crt`.

A certificate is valid until it expires; a stolen key, or a person who leaves, must stop working
before that. `domicile certs revoke` adds certificates to the CRL, signed by the cluster CA, and
the file goes wherever `ca.crt` goes. Every daemon reads it with its TLS files (a CRL that the CA
did not sign, or that does not parse, is refused like a bad certificate) and picks up a new one
within REVOCATION_LOOK_S, without a restart. A revoked certificate then authenticates no call and
no scrape of /metrics.

The daemons check at the application layer, after the handshake (gRPC's Python API takes no
CRL): every call's certificate is looked up by serial number. A connection open before the
revocation stays open, but each call on it is refused, and so is a long-lived stream when it is
next opened. What a daemon dials is not checked against the CRL: a revoked node key could still
serve as that node to a peer that reaches it (only with a position in the network); revoke and
replace its certificate, and remove the node (`domicile nodes remove`) if it is gone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from domicile.errors import InvalidArgument
from domicile.identity.files import PUBLIC_MODE, read_file, write_atomically

CA_CRL = "ca.crl"
# How often a daemon looks at its TLS files for a new CRL between connections (a stat each).
REVOCATION_LOOK_S = 1.0
# Revocations are never dropped, so the list stays in force for the CA's whole life.
_BACKDATE = dt.timedelta(minutes=5)
# The keys a CA may sign with (`certs init` makes an EC one; a CA of one's own may be another).
_SIGNING_KEYS = (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)


def crl_path(ca_file: Path) -> Path:
    """Where the CRL of the CA in `ca_file` lives: ca.crl in the same directory."""
    return ca_file.parent / CA_CRL


def load_revoked(path: Path, ca: x509.Certificate) -> frozenset[int]:
    """The serial numbers the CRL at `path` revokes (none when there is no file)."""
    return load_list(path, ca)[0]


def load_list(path: Path, ca: x509.Certificate) -> tuple[frozenset[int], int]:
    """The serial numbers the CRL at `path` revokes and its CRL number (none and 0 when there is
    no file). Refuses, naming the file, a CRL that does not parse, that another CA issued, or
    whose signature is not the CA's: a forged list could otherwise un-revoke a certificate by
    leaving it out. (An older list of the same CA is refused by the process that holds a newer
    one: domicile.identity.reloading.)"""
    if not path.exists():
        return frozenset(), 0
    crl = _read(path)
    if crl.issuer != ca.subject:
        raise InvalidArgument(
            f"revocation list {path} is not issued by the cluster CA ({crl.issuer.rfc4514_string()})"
        )
    key = ca.public_key()
    if not isinstance(key, _SIGNING_KEYS) or not crl.is_signature_valid(key):
        raise InvalidArgument(f"revocation list {path} is not signed by the cluster CA")
    return frozenset(entry.serial_number for entry in crl), _number(crl)


def revoke(
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    directory: Path,
    serials: Iterable[int],
    now: dt.datetime | None = None,
) -> tuple[list[int], int]:
    """Adds `serials` to the CRL of the CA in `directory` (made when missing), signed with the CA
    key, and writes it there atomically. Returns the serials newly revoked (those listed already
    stay as they were) and how many the list holds."""
    path = directory / CA_CRL
    now = now or dt.datetime.now(dt.UTC)
    listed: list[x509.RevokedCertificate] = []
    number = 0
    if path.exists():
        load_revoked(path, ca_certificate)  # checked before anything is added to it
        crl = _read(path)
        listed = list(crl)
        number = _number(crl)
    known = {entry.serial_number for entry in listed}
    added = [s for s in dict.fromkeys(serials) if s not in known]
    for serial in added:
        listed.append(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - _BACKDATE).build()
        )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_certificate.subject)
        .last_update(now - _BACKDATE)
        .next_update(max(ca_certificate.not_valid_after_utc, now + dt.timedelta(days=1)))
        .add_extension(x509.CRLNumber(number + 1), critical=False)
    )
    for entry in listed:
        builder = builder.add_revoked_certificate(entry)
    signed = builder.sign(ca_key, hashes.SHA256())
    write_atomically(path, signed.public_bytes(Encoding.PEM), PUBLIC_MODE, overwrite=True)
    return added, len(listed)


def parse_serial(text: str) -> int:
    """A serial number as `certs issue` prints it (hex, with or without 0x or colons)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise InvalidArgument(
            f"serial {text!r} is not a hexadecimal number (as `domicile certs issue` prints it)"
        ) from None
    if value <= 0:
        raise InvalidArgument(f"serial {text!r} must be positive")
    return value


def serial_text(serial: int) -> str:
    return f"0x{serial:x}"


def _number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _read(path: Path) -> x509.CertificateRevocationList:
    data = read_file(path, "revocation list")
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError:
        raise InvalidArgument(f"revocation list {path} is not a PEM CRL") from None
