"""The cluster's certificate authority and the certificates it issues.

Layout of a CA directory: `ca.crt` (the trust anchor every process needs) and `ca.key` (mode
0600, needed only to issue). Issued files are `<stem>.crt` and `<stem>.key` with the stems
`node-<node_id>`, `coordinator` and `client-<name>`.

Every key is ECDSA P-256: TLS stacks all accept it and it signs fast. The identity is the one
SPIFFE URI SAN; a client's roles are subject OUs (see `certificate.py`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from domicile.errors import AlreadyExists, InvalidArgument
from domicile.identity import audit_key, spiffe
from domicile.identity.files import PRIVATE_MODE, PUBLIC_MODE, read_file, write_atomically
from domicile.identity.principal import PrincipalKind, Role

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS_DEFAULT = 3650
LEAF_DAYS_DEFAULT = 90
DAYS_MAX = 36500
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
# Clocks of the hosts that check a new certificate may be behind the issuer's.
BACKDATE = dt.timedelta(minutes=5)
# Identity names end in this; no extra host may (see parse_hosts).
RESERVED_DNS_SUFFIX = "." + spiffe.SERVER_NAME_SUFFIX
_DNS_RE = re.compile(
    r"^(?=.{1,253}$)(\*\.)?[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\Z"
)


@dataclass(frozen=True)
class Validity:
    not_before: dt.datetime
    not_after: dt.datetime

    def __post_init__(self) -> None:
        if self.not_before.tzinfo is None or self.not_after.tzinfo is None:
            raise InvalidArgument("validity times must carry a time zone")
        if self.not_after <= self.not_before:
            raise InvalidArgument("a certificate must expire after it becomes valid")

    @classmethod
    def days(cls, days: int, now: dt.datetime | None = None) -> Validity:
        if not 1 <= days <= DAYS_MAX:
            raise InvalidArgument(f"validity of {days} days is outside 1..{DAYS_MAX}")
        start = (now or dt.datetime.now(dt.UTC)) - BACKDATE
        return cls(start, start + BACKDATE + dt.timedelta(days=days))


@dataclass(frozen=True)
class ClusterCa:
    cluster: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Issued:
    """A certificate and its new private key, in PEM."""

    uri: str
    certificate_pem: bytes
    key_pem: bytes
    # A node certificate's new audit-head key (see audit_key.py), when issuing made one.
    audit_key_pem: bytes = b""

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (and `<stem>.audit.key` when issuing made that key),
        replacing older ones (re-issuing is how certificates rotate).

        The keys go first: a process that reloads on change then finds the new key before the
        new certificate, and one that sees a mismatched pair keeps what it had until both are new.
        """
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        if self.audit_key_pem:
            write_atomically(audit_key.key_path(cert_path), self.audit_key_pem, PRIVATE_MODE, overwrite=True)
        write_atomically(key_path, self.key_pem, PRIVATE_MODE, overwrite=True)
        write_atomically(cert_path, self.certificate_pem, PUBLIC_MODE, overwrite=True)
        return cert_path, key_path


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_ca(
    directory: Path,
    cluster: str,
    *,
    validity: Validity | None = None,
    overwrite: bool = False,
) -> ClusterCa:
    """Create the cluster CA in `directory`. An existing CA is kept (AlreadyExists) unless `overwrite`:
    replacing it makes every certificate issued so far untrusted."""
    spiffe.check_cluster(cluster)
    if not overwrite:
        for name in (CA_CERT, CA_KEY):
            if (directory / name).exists():
                raise AlreadyExists(
                    f"a CA exists already ({directory / name}); replacing it untrusts every certificate "
                    "issued so far: pass overwrite (--force) to do it"
                )
    validity = validity or Validity.days(CA_DAYS_DEFAULT)
    key = new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Domicile cluster CA {cluster}"),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        # SPIFFE's convention: the CA names its trust domain, which is how load_ca learns the cluster.
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"{spiffe.SCHEME}{cluster}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    # The key first: a certificate without its key is useless, a key without its certificate harmless.
    write_atomically(directory / CA_KEY, key_pem(key), PRIVATE_MODE, overwrite=overwrite)
    write_atomically(
        directory / CA_CERT,
        certificate.public_bytes(serialization.Encoding.PEM),
        PUBLIC_MODE,
        overwrite=overwrite,
    )
    return ClusterCa(cluster, certificate, key)


def load_ca(directory: Path) -> ClusterCa:
    cert_pem = read_file(directory / CA_CERT, "CA certificate")
    key_data = read_file(directory / CA_KEY, "CA key")
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_data, password=None)
    except ValueError as error:
        raise InvalidArgument(f"the CA in {directory} cannot be read: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
        raise InvalidArgument(f"{directory / CA_KEY} is not the key of {directory / CA_CERT}")
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1 or not uris[0].startswith(spiffe.SCHEME):
        raise InvalidArgument(f"{directory / CA_CERT} names no trust domain (spiffe://<cluster> SAN)")
    return ClusterCa(spiffe.check_cluster(uris[0][len(spiffe.SCHEME) :]), certificate, key)


def parse_hosts(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _DNS_RE.match(host):
            raise InvalidArgument(f"host {host!r} is neither an IP address nor a DNS name")
        if "*" in host or host.lower().rstrip(".").endswith(RESERVED_DNS_SUFFIX):
            # Dialers check a server by a DNS name made from its identity (spiffe.server_name); a
            # wildcard or one of those names as an extra host would let it pass as another.
            raise InvalidArgument(
                f"host {host!r} is a wildcard or a name reserved for identities "
                f"(*{RESERVED_DNS_SUFFIX}); give the names or addresses the server is reached at"
            )
        names.append(x509.DNSName(host.lower()))
    return names


def issue_node(
    ca: ClusterCa,
    region: str,
    node_id: str,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    validity: Validity | None = None,
    audit_public_key: bytes | None = None,
) -> Issued:
    """A node serves clients and nodes and dials nodes and the coordinator: serverAuth and clientAuth.

    The certificate binds the node's audit-head key (audit_key.py): `audit_public_key` (raw
    Ed25519) when given, else a new key that the result carries (`audit_key_pem`)."""
    uri = spiffe.node_id_uri(ca.cluster, region, node_id)
    server_name = spiffe.server_name(PrincipalKind.NODE, ca.cluster, region, node_id)
    new_audit_key = b""
    if audit_public_key is None:
        generated = Ed25519PrivateKey.generate()
        audit_public_key, new_audit_key = audit_key.public_bytes(generated), audit_key.private_pem(generated)
    issued = _issue(
        ca,
        uri,
        common_name=node_id,
        roles=(),
        usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        dns=[x509.DNSName(server_name), *parse_hosts(hosts)],
        validity=validity,
        extensions=[audit_key.extension(audit_public_key)],
    )
    return dataclasses.replace(issued, audit_key_pem=new_audit_key)


def issue_coordinator(
    ca: ClusterCa, *, hosts: Sequence[str] = DEFAULT_HOSTS, validity: Validity | None = None
) -> Issued:
    """clientAuth too: tools acting for the coordinator (and a future HA peer) dial with it."""
    uri = spiffe.coordinator_uri(ca.cluster)
    server_name = spiffe.server_name(PrincipalKind.COORDINATOR, ca.cluster)
    return _issue(
        ca,
        uri,
        common_name="coordinator",
        roles=(),
        usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        dns=[x509.DNSName(server_name), *parse_hosts(hosts)],
        validity=validity,
    )


def issue_client(
    ca: ClusterCa, name: str, roles: Iterable[Role] = (), *, validity: Validity | None = None
) -> Issued:
    """clientAuth only, so a stolen client key cannot impersonate a server."""
    uri = spiffe.client_uri(ca.cluster, name)
    return _issue(
        ca,
        uri,
        common_name=name,
        roles=sorted(set(roles)),
        usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        dns=[],
        validity=validity,
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca: ClusterCa,
    uri: str,
    *,
    common_name: str,
    roles: Sequence[Role],
    usages: Sequence[x509.ObjectIdentifier],
    dns: list[x509.GeneralName],
    validity: Validity | None,
    extensions: Sequence[x509.ExtensionType] = (),
) -> Issued:
    validity = validity or Validity.days(LEAF_DAYS_DEFAULT)
    ca_expires = ca.certificate.not_valid_after_utc
    if validity.not_after > ca_expires:
        raise InvalidArgument(
            f"the certificate would outlive the CA, which expires {ca_expires:%Y-%m-%d %H:%M} UTC; "
            "ask for fewer days"
        )
    key = new_key()
    subject = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.cluster),
        *(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value) for role in roles),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
    ]
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri), *dns]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    certificate = builder.sign(ca.key, hashes.SHA256())
    return Issued(uri, certificate.public_bytes(serialization.Encoding.PEM), key_pem(key))
