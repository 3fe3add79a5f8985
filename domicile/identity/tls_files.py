"""The three files a TLS endpoint needs, checked before they are used.

A process refuses to start on a missing file, a key others can read, a certificate that does not
match its key, is not signed by the CA, or is outside its validity; the message names the file.
A process already running checks replacements the same way and keeps what it has when they fail.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from domicile.errors import InvalidArgument, Unauthenticated
from domicile.identity import revocation, spiffe
from domicile.identity.certificate import principal_from_certificate
from domicile.identity.files import check_owner_only, read_file
from domicile.identity.pki import CA_CERT
from domicile.identity.principal import Principal


class Usage(enum.StrEnum):
    SERVER = "server"
    CLIENT = "client"


_USAGE_OID = {Usage.SERVER: ExtendedKeyUsageOID.SERVER_AUTH, Usage.CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH}
_USAGE_NAME = {Usage.SERVER: "serverAuth", Usage.CLIENT: "clientAuth"}

# (mtime_ns, size, inode) per file; None for a file that is not there.
Fingerprint = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class TlsMaterial:
    """Validated PEM bytes, with the cluster (the CA's trust domain) and the identity they prove."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    cluster: str
    principal: Principal
    not_after: dt.datetime


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path, stem: str) -> TlsFiles:
        """The layout `domicile certs issue --out-dir` writes: ca.crt, <stem>.crt, <stem>.key."""
        return cls(directory / CA_CERT, directory / f"{stem}.crt", directory / f"{stem}.key")

    def fingerprint(self) -> Fingerprint:
        def one(path: Path) -> tuple[int, int, int] | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return (st.st_mtime_ns, st.st_size, st.st_ino)

        return (one(self.ca), one(self.cert), one(self.key))

    @property
    def crl(self) -> Path:
        """The cluster's revocation list, beside the CA file (optional; a server reads it,
        domicile.identity.revocation)."""
        return revocation.crl_path(self.ca)

    def load(self, usage: Usage | None = None, now: dt.datetime | None = None) -> TlsMaterial:
        """Read and check the three files; InvalidArgument naming the file and the fault otherwise.

        With `usage`, the certificate must also allow it (serverAuth to serve, clientAuth to dial):
        the handshake would refuse it anyway, but only with a message that names no file.
        """
        ca_pem = read_file(self.ca, "CA certificate")
        cert_pem = read_file(self.cert, "certificate")
        key_pem = read_file(self.key, "private key")
        check_owner_only(self.key)
        ca = _only_certificate(ca_pem, self.ca)
        certificate = _certificate(cert_pem, self.cert)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise InvalidArgument(f"private key {self.key} is not an unencrypted PEM private key") from None
        if key.public_key() != certificate.public_key():
            raise InvalidArgument(f"certificate {self.cert} does not match private key {self.key}")
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise InvalidArgument(f"certificate {self.cert} is not issued by the CA in {self.ca}") from None
        now = now or dt.datetime.now(dt.UTC)
        if now < certificate.not_valid_before_utc:
            starts = certificate.not_valid_before_utc
            raise InvalidArgument(f"certificate {self.cert} is not valid before {starts:%Y-%m-%d %H:%M} UTC")
        if now >= certificate.not_valid_after_utc:
            raise InvalidArgument(
                f"certificate {self.cert} expired {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        if usage is not None and not _allows(certificate, usage):
            name = _USAGE_NAME[usage]
            raise InvalidArgument(
                f"certificate {self.cert} may not be used by a {usage.value} (no {name} usage)"
            )
        cluster = _trust_domain(ca, self.ca)
        try:
            principal = principal_from_certificate(certificate, cluster)
        except Unauthenticated as error:
            raise InvalidArgument(f"certificate {self.cert}: {error.message}") from None
        return TlsMaterial(ca_pem, cert_pem, key_pem, cluster, principal, certificate.not_valid_after_utc)


def _only_certificate(pem: bytes, path: Path) -> x509.Certificate:
    """The CA file's one certificate. gRPC trusts every certificate in the file, but the cluster
    is read from the first: a second CA there could mint any identity under this cluster's name."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise InvalidArgument(f"{path} is not a PEM certificate") from None
    if len(certificates) != 1:
        raise InvalidArgument(
            f"{path} holds {len(certificates)} certificates; a CA file holds the cluster CA only "
            "(to rotate the CA, issue from the new one and replace the file)"
        )
    return certificates[0]


def _certificate(pem: bytes, path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise InvalidArgument(f"{path} is not a PEM certificate") from None


def _allows(certificate: x509.Certificate, usage: Usage) -> bool:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        # RFC 5280: without the extension a certificate is not restricted to any purpose.
        return True
    return _USAGE_OID[usage] in usages


def _trust_domain(ca: x509.Certificate, path: Path) -> str:
    try:
        san = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    domains = [u[len(spiffe.SCHEME) :] for u in uris if u.startswith(spiffe.SCHEME)]
    if len(domains) != 1:
        raise InvalidArgument(f"CA certificate {path} names no cluster (one spiffe://<cluster> SAN)")
    return spiffe.check_cluster(domains[0])
