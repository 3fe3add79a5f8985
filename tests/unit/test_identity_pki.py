"""The cluster CA, issued certificates, and principals parsed from certificates."""

from __future__ import annotations

import datetime as dt
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from domicile.errors import AlreadyExists, InvalidArgument, Unauthenticated
from domicile.identity import pki
from domicile.identity.certificate import principal_from_certificate
from domicile.identity.principal import PrincipalKind, Role
from tests.support.pki import odd_certificate


@pytest.fixture
def ca(tmp_path):
    return pki.init_ca(tmp_path / "ca", "prod")


def usages(issued):
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def sans(issued):
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_init_ca_writes_an_owner_only_key_and_refuses_to_overwrite(tmp_path):
    directory = tmp_path / "ca"
    ca = pki.init_ca(directory, "prod")
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["ca.crt", "ca.key"]
    loaded = pki.load_ca(directory)
    assert loaded.cluster == "prod"
    assert loaded.certificate == ca.certificate
    constraints = loaded.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca

    before = (directory / "ca.crt").read_bytes()
    with pytest.raises(AlreadyExists, match="a CA exists already"):
        pki.init_ca(directory, "prod")
    assert (directory / "ca.crt").read_bytes() == before
    pki.init_ca(directory, "prod", overwrite=True)
    assert (directory / "ca.crt").read_bytes() != before
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600


def test_load_ca_refuses_a_key_of_another_ca(tmp_path):
    pki.init_ca(tmp_path / "a", "prod")
    pki.init_ca(tmp_path / "b", "prod")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(InvalidArgument, match="is not the key of"):
        pki.load_ca(tmp_path / "a")
    with pytest.raises(InvalidArgument, match="does not exist"):
        pki.load_ca(tmp_path / "missing")


def test_node_certificate_serves_and_dials_and_names_its_node(ca):
    issued = pki.issue_node(ca, "eu-west-1", "n1", hosts=["localhost", "127.0.0.1", "::1", "db.example"])
    assert usages(issued) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    names = sans(issued)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://prod/region/eu-west-1/node/n1"
    ]
    assert names.get_values_for_type(x509.DNSName) == [
        "n1.eu-west-1.node.prod.domicile.invalid",
        "localhost",
        "db.example",
    ]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    principal = principal_from_certificate(issued.certificate_pem, "prod")
    assert (principal.kind, principal.region, principal.node_id, principal.roles) == (
        PrincipalKind.NODE,
        "eu-west-1",
        "n1",
        frozenset(),
    )


def test_coordinator_and_client_certificates(ca):
    coordinator = pki.issue_coordinator(ca)
    assert usages(coordinator) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert principal_from_certificate(coordinator.certificate_pem, "prod").kind is PrincipalKind.COORDINATOR

    client = pki.issue_client(ca, "alice", [Role.DPO, Role.AUDITOR])
    assert usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert sans(client).get_values_for_type(x509.DNSName) == []
    cert = x509.load_pem_x509_certificate(client.certificate_pem)
    units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    assert units == ["auditor", "dpo"]
    principal = principal_from_certificate(cert.public_bytes(Encoding.DER), "prod")
    assert (principal.kind, principal.name, principal.roles) == (
        PrincipalKind.CLIENT,
        "alice",
        {Role.DPO, Role.AUDITOR},
    )
    assert str(principal) == "spiffe://prod/client/alice"


def test_validity_can_be_given_in_days_or_as_times(ca):
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    issued = pki.issue_client(ca, "a", validity=pki.Validity.days(1, now=now))
    cert = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert cert.not_valid_after_utc == now + dt.timedelta(days=1)
    assert cert.not_valid_before_utc < now
    window = pki.Validity(now, now + dt.timedelta(hours=1))
    assert (
        x509.load_pem_x509_certificate(
            pki.issue_client(ca, "b", validity=window).certificate_pem
        ).not_valid_before_utc
        == now
    )
    with pytest.raises(InvalidArgument, match="expire after it becomes valid"):
        pki.Validity(now, now)
    with pytest.raises(InvalidArgument, match=r"outside 1\.\.36500"):
        pki.Validity.days(0)
    with pytest.raises(InvalidArgument, match="would outlive the CA"):
        pki.issue_client(ca, "c", validity=pki.Validity.days(20000))


def test_bad_hosts_are_refused(ca):
    with pytest.raises(InvalidArgument, match="neither an IP address nor a DNS name"):
        pki.issue_node(ca, "eu-west-1", "n1", hosts=["bad host"])


def test_issued_files_replace_older_ones_and_keys_are_owner_only(ca, tmp_path):
    first = pki.issue_node(ca, "eu-west-1", "n1").write(tmp_path / "out", "node-n1")
    pki.issue_node(ca, "eu-west-1", "n1").write(tmp_path / "out", "node-n1")
    cert_path, key_path = first
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "node-n1.audit.key",
        "node-n1.crt",
        "node-n1.key",
    ]
    assert stat.S_IMODE((tmp_path / "out" / "node-n1.audit.key").stat().st_mode) == 0o600
    assert principal_from_certificate(cert_path.read_bytes(), "prod").node_id == "n1"


@pytest.mark.parametrize(
    ("uri", "dns", "units", "says"),
    [
        (None, ("localhost",), (), "has no SPIFFE ID"),
        (None, (), (), "has no subject alternative names"),
        ("spiffe://staging/client/alice", (), (), "belongs to cluster 'staging'"),
        ("spiffe://prod/clients/alice", (), (), "malformed path"),
        ("spiffe://prod/client/alice", (), ("root",), "unknown role 'root'"),
        ("spiffe://prod/coordinator", (), ("dpo",), "only clients have roles"),
    ],
)
def test_certificates_without_a_valid_identity_are_refused(ca, uri, dns, units, says):
    odd = odd_certificate(ca, uri=uri, dns=dns, units=units)
    with pytest.raises(Unauthenticated, match=says):
        principal_from_certificate(odd.certificate_pem, "prod")


def test_garbage_is_not_a_certificate():
    with pytest.raises(Unauthenticated, match=r"not a readable X\.509 certificate"):
        principal_from_certificate(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "prod")
    with pytest.raises(Unauthenticated, match=r"not a readable X\.509 certificate"):
        principal_from_certificate(b"\x30\x03\x02\x01\x00", "prod")
