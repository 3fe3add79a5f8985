"""TlsFiles: the checks a process makes on its CA, certificate and key before it serves or dials."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from domicile.errors import InvalidArgument
from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, PrincipalKind
from domicile.identity.tls_files import TlsFiles
from tests.support.pki import odd_certificate


@pytest.fixture
def ca(tmp_path):
    return pki.init_ca(tmp_path, "prod")


@pytest.fixture
def node_files(ca, tmp_path):
    pki.issue_node(ca, "eu-west-1", "n1").write(tmp_path, "node-n1")
    return TlsFiles.in_directory(tmp_path, "node-n1")


def test_good_files_load_with_their_cluster_and_identity(node_files):
    material = node_files.load()
    assert material.cluster == "prod"
    assert material.principal.kind is PrincipalKind.NODE
    assert material.principal.uri == "spiffe://prod/region/eu-west-1/node/n1"
    assert material.cert_pem == node_files.cert.read_bytes()


def test_a_missing_file_is_named(node_files):
    node_files.cert.unlink()
    with pytest.raises(InvalidArgument, match=r"certificate .*node-n1\.crt does not exist"):
        node_files.load()


def test_a_key_others_can_read_is_refused(node_files):
    os.chmod(node_files.key, 0o640)
    with pytest.raises(InvalidArgument, match=r"has mode 0640; it must be readable by its owner only"):
        node_files.load()


def test_a_certificate_that_does_not_match_its_key_is_refused(ca, node_files):
    node_files.key.write_bytes(pki.issue_node(ca, "eu-west-1", "n1").key_pem)
    with pytest.raises(InvalidArgument, match="does not match private key"):
        node_files.load()


def test_a_certificate_of_another_ca_is_refused(tmp_path, node_files):
    other = pki.init_ca(tmp_path / "other", "prod")
    node_files.ca.write_bytes(other.certificate_pem)
    with pytest.raises(InvalidArgument, match="is not issued by the CA"):
        node_files.load()


def test_expired_and_not_yet_valid_certificates_are_refused(node_files):
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    with pytest.raises(InvalidArgument, match="expired"):
        node_files.load(now=later)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with pytest.raises(InvalidArgument, match="is not valid before"):
        node_files.load(now=earlier)


def test_a_certificate_without_an_identity_is_refused(ca, tmp_path):
    odd_certificate(ca, uri=None).write(tmp_path, "odd")
    with pytest.raises(InvalidArgument, match=r"odd\.crt: certificate .* has no SPIFFE ID"):
        TlsFiles.in_directory(tmp_path, "odd").load()


def test_garbage_files_are_named(node_files):
    node_files.key.write_bytes(b"not a key")
    with pytest.raises(InvalidArgument, match="is not an unencrypted PEM private key"):
        node_files.load()
    node_files.cert.write_bytes(b"not a certificate")
    with pytest.raises(InvalidArgument, match="is not a PEM certificate"):
        node_files.load()


def test_dialer_options_name_the_expected_server(node_files):
    dialer = Dialer.mutual_tls(node_files)
    assert dialer.cluster == "prod"
    assert dialer.options(ExpectedPeer.node("eu-west-1", "n2")) == [
        ("grpc.ssl_target_name_override", "n2.eu-west-1.node.prod.domicile.invalid")
    ]
    assert dialer.options(ExpectedPeer.coordinator()) == [
        ("grpc.ssl_target_name_override", "coordinator.prod.domicile.invalid")
    ]
    assert dialer.options(ExpectedPeer.node("eu-west-1")) == []
    assert dialer.options(None) == []
    with pytest.raises(InvalidArgument, match="a dialer expects a server"):
        dialer.options(ExpectedPeer.client("alice"))
