"""From a peer's certificate to a `Principal`.

The identity is the certificate's one SPIFFE URI SAN. A client's roles are its subject's
organizational units, one OU per role (`OU=dpo`): an OU is part of every X.509 parser's model
(Python's `ssl.getpeercert()`, OpenSSL's `-subject`, Go's `pkix.Name`), so any tool can read the
roles without knowing a private OID, and the CA's signature covers them like the rest of the
subject. SPIFFE allows one URI SAN per certificate, which rules out one URI per role.

The chain, validity and key usage are not checked here: the TLS handshake did that before a
certificate reaches this module. Use it on verified peers only.
"""

from __future__ import annotations

import dataclasses

from cryptography import x509
from cryptography.x509.oid import NameOID

from domicile.errors import InvalidArgument, Unauthenticated
from domicile.identity import audit_key, spiffe
from domicile.identity.principal import AuthMethod, Principal, PrincipalKind, parse_roles


def load_certificate(data: bytes | str) -> x509.Certificate:
    """A certificate in PEM (as gRPC's auth context gives it) or DER."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError:
        raise Unauthenticated("the peer certificate is not a readable X.509 certificate") from None


def spiffe_uri(certificate: x509.Certificate) -> str:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Unauthenticated(
            f"certificate {_subject(certificate)} has no subject alternative names, so no SPIFFE ID"
        ) from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(spiffe.SCHEME)]
    if not uris:
        raise Unauthenticated(f"certificate {_subject(certificate)} has no SPIFFE ID (spiffe:// URI SAN)")
    if len(uris) > 1:
        raise Unauthenticated(
            f"certificate {_subject(certificate)} has {len(uris)} SPIFFE IDs; one is allowed"
        )
    return uris[0]


def principal_from_certificate(data: bytes | str | x509.Certificate, cluster: str) -> Principal:
    """The principal a (verified) certificate of `cluster` names; Unauthenticated when it names none."""
    certificate = data if isinstance(data, x509.Certificate) else load_certificate(data)
    principal = spiffe.parse_uri(spiffe_uri(certificate), cluster)
    if principal.kind is PrincipalKind.NODE:
        principal = dataclasses.replace(principal, audit_key=audit_key.bound_key(certificate))
    units = [
        str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    ]
    if not units:
        return principal
    if principal.kind is not PrincipalKind.CLIENT:
        raise Unauthenticated(f"{principal.uri} carries roles ({', '.join(units)}); only clients have roles")
    try:
        roles = parse_roles(units)
    except InvalidArgument as error:
        raise Unauthenticated(f"{principal.uri}: {error.message}") from None
    return Principal(
        principal.kind,
        principal.cluster,
        principal.uri,
        name=principal.name,
        roles=roles,
        authenticated_by=AuthMethod.CERTIFICATE,
    )


def _subject(certificate: x509.Certificate) -> str:
    return f"'{certificate.subject.rfc4514_string()}'"
