"""Certificates the cluster CA never issues (SAN-less, server-only, from another CA), built with
`cryptography` directly so the tests can show they are refused."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from domicile.identity.pki import ClusterCa, Issued, key_pem, new_key


def odd_certificate(
    ca: ClusterCa,
    *,
    uri: str | None,
    usages: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    dns: Sequence[str] = ("localhost",),
    units: Sequence[str] = (),
    days: int = 1,
) -> Issued:
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    if uri is not None:
        names.insert(0, x509.UniformResourceIdentifier(uri))
    subject = x509.Name(
        [
            *(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units),
            x509.NameAttribute(NameOID.COMMON_NAME, "odd"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(ca.key, hashes.SHA256())
    return Issued(uri or "", certificate.public_bytes(serialization.Encoding.PEM), key_pem(key))
