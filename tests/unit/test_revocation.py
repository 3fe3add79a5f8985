"""The cluster's revocation list: written by the CA, read only when the CA signed it, carried
with a daemon's TLS material and picked up again when it changes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from domicile.errors import InvalidArgument
from domicile.identity import pki, revocation
from domicile.identity.credentials import ServerSecurity
from domicile.identity.principal import Role
from domicile.identity.tls_files import TlsFiles


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = pki.init_ca(directory, "prod")
    pki.issue_node(ca, "eu-west-1", "eu-west-1").write(directory, "node-eu-west-1")
    pki.issue_client(ca, "trading", (Role.APP,)).write(directory, "client-trading")
    return directory


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def crl_number(path: Path) -> int:
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_no_list_revokes_nothing(ca_dir: Path) -> None:
    ca = pki.load_ca(ca_dir)
    assert revocation.load_revoked(ca_dir / revocation.CA_CRL, ca.certificate) == frozenset()


def test_revoking_adds_to_the_list_and_keeps_what_it_held(ca_dir: Path) -> None:
    ca = pki.load_ca(ca_dir)
    trading = serial_of(ca_dir / "client-trading.crt")
    added, listed = revocation.revoke(ca.certificate, ca.key, ca_dir, [trading])
    assert (added, listed) == ([trading], 1)
    path = ca_dir / revocation.CA_CRL
    assert revocation.load_revoked(path, ca.certificate) == {trading}
    assert crl_number(path) == 1
    added, listed = revocation.revoke(ca.certificate, ca.key, ca_dir, [trading, 0x1234, 0x1234])
    assert (added, listed) == ([0x1234], 2)
    assert revocation.load_revoked(path, ca.certificate) == {trading, 0x1234}
    assert crl_number(path) == 2
    # The list stays in force as long as the CA.
    crl = x509.load_pem_x509_crl(path.read_bytes())
    assert crl.next_update_utc is not None and crl.next_update_utc >= ca.certificate.not_valid_after_utc


def test_a_list_another_ca_signed_is_refused_even_under_the_same_name(ca_dir: Path, tmp_path: Path) -> None:
    """Negative control of the signature check: a CA of the same cluster name has the same
    subject, so only the signature tells the forged list (which would un-revoke by omission)."""
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = pki.init_ca(other_dir, "prod")
    assert other.certificate.subject == pki.load_ca(ca_dir).certificate.subject
    revocation.revoke(other.certificate, other.key, other_dir, [0x99])
    (ca_dir / revocation.CA_CRL).write_bytes((other_dir / revocation.CA_CRL).read_bytes())
    with pytest.raises(InvalidArgument, match="is not signed by the cluster CA"):
        revocation.load_revoked(ca_dir / revocation.CA_CRL, pki.load_ca(ca_dir).certificate)
    # A daemon does not start on it.
    with pytest.raises(InvalidArgument, match="is not signed by the cluster CA"):
        ServerSecurity.mutual_tls(TlsFiles.in_directory(ca_dir, "node-eu-west-1"))


def test_a_list_that_is_not_a_crl_is_refused(ca_dir: Path) -> None:
    (ca_dir / revocation.CA_CRL).write_text("not a CRL\n")
    with pytest.raises(InvalidArgument, match=r"ca\.crl is not a PEM CRL"):
        revocation.load_revoked(ca_dir / revocation.CA_CRL, pki.load_ca(ca_dir).certificate)
    with pytest.raises(InvalidArgument, match="is not a PEM CRL"):
        ca = pki.load_ca(ca_dir)
        revocation.revoke(ca.certificate, ca.key, ca_dir, [1])


@pytest.mark.parametrize(
    ("text", "serial"), [("0x1f", 0x1F), ("1F", 0x1F), ("1f:00", 0x1F00), ("  0X0a ", 0x0A)]
)
def test_serials_are_read_as_certs_issue_prints_them(text: str, serial: int) -> None:
    assert revocation.parse_serial(text) == serial
    assert revocation.parse_serial(revocation.serial_text(serial)) == serial


@pytest.mark.parametrize("text", ["", "zz", "0x", "0", "-1"])
def test_a_serial_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="serial"):
        revocation.parse_serial(text)


def test_a_new_list_is_picked_up_at_the_next_look(ca_dir: Path) -> None:
    files = TlsFiles.in_directory(ca_dir, "node-eu-west-1")
    security = ServerSecurity.mutual_tls(files)
    assert security.revoked() == frozenset()
    ca = pki.load_ca(ca_dir)
    trading = serial_of(ca_dir / "client-trading.crt")
    revocation.revoke(ca.certificate, ca.key, ca_dir, [trading])
    # Not on every call: once per REVOCATION_LOOK_S (here: not yet due).
    security._next_look = float("inf")
    assert security.revoked() == frozenset()
    security._next_look = 0.0
    assert security.revoked() == {trading}


def test_a_forged_list_leaves_the_revocations_in_force(ca_dir: Path, tmp_path: Path) -> None:
    files = TlsFiles.in_directory(ca_dir, "node-eu-west-1")
    ca = pki.load_ca(ca_dir)
    trading = serial_of(ca_dir / "client-trading.crt")
    revocation.revoke(ca.certificate, ca.key, ca_dir, [trading])
    security = ServerSecurity.mutual_tls(files)
    assert security.revoked() == {trading}
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = pki.init_ca(other_dir, "prod")
    revocation.revoke(other.certificate, other.key, other_dir, [0x99])  # leaves trading out
    (ca_dir / revocation.CA_CRL).write_bytes((other_dir / revocation.CA_CRL).read_bytes())
    security._next_look = 0.0
    assert security.revoked() == {trading}


def test_the_revocation_date_is_when_it_was_revoked(ca_dir: Path) -> None:
    ca = pki.load_ca(ca_dir)
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    revocation.revoke(ca.certificate, ca.key, ca_dir, [7], now=now)
    entry = next(iter(x509.load_pem_x509_crl((ca_dir / revocation.CA_CRL).read_bytes())))
    assert now - dt.timedelta(minutes=10) < entry.revocation_date_utc <= now


def test_an_older_list_a_forked_one_or_its_removal_lifts_nothing(ca_dir: Path) -> None:
    """Revocations are permanent: a stale copy of ca.crl put back on a host, the file removed, or
    a list made from a stale copy (a higher number without the later entries) lifts nothing."""
    files = TlsFiles.in_directory(ca_dir, "node-eu-west-1")
    ca = pki.load_ca(ca_dir)
    revocation.revoke(ca.certificate, ca.key, ca_dir, [1])
    older = (ca_dir / revocation.CA_CRL).read_bytes()
    revocation.revoke(ca.certificate, ca.key, ca_dir, [2])
    security = ServerSecurity.mutual_tls(files)
    assert security.revoked() == {1, 2}
    (ca_dir / revocation.CA_CRL).write_bytes(older)
    security._next_look = 0.0
    assert security.revoked() == {1, 2}
    (ca_dir / revocation.CA_CRL).unlink()
    security._next_look = 0.0
    assert security.revoked() == {1, 2}
    # Forked from the stale copy: numbers 2 and 3, without serial 2. Its new entries count.
    (ca_dir / revocation.CA_CRL).write_bytes(older)
    revocation.revoke(ca.certificate, ca.key, ca_dir, [3])
    revocation.revoke(ca.certificate, ca.key, ca_dir, [4])
    security._next_look = 0.0
    assert security.revoked() == {1, 2, 3, 4}


def test_the_revocations_in_force_survive_a_restart_on_a_stale_list(ca_dir: Path, tmp_path: Path) -> None:
    files = TlsFiles.in_directory(ca_dir, "node-eu-west-1")
    state_dir = tmp_path / "data"
    ca = pki.load_ca(ca_dir)
    revocation.revoke(ca.certificate, ca.key, ca_dir, [1])
    older = (ca_dir / revocation.CA_CRL).read_bytes()
    revocation.revoke(ca.certificate, ca.key, ca_dir, [2])
    assert ServerSecurity.mutual_tls(files, state_dir).revoked() == {1, 2}
    assert (state_dir / revocation.REVOKED_STATE).exists()
    # Restarted on the stale copy: what it held stays in force.
    (ca_dir / revocation.CA_CRL).write_bytes(older)
    assert ServerSecurity.mutual_tls(files, state_dir).revoked() == {1, 2}
    # Negative control: without its state, a daemon knows only the list on disk.
    assert ServerSecurity.mutual_tls(files, tmp_path / "elsewhere").revoked() == {1}


def test_a_new_ca_starts_from_its_own_list(ca_dir: Path, tmp_path: Path) -> None:
    """The state belongs to the CA it was read for: a daemon moved to a new CA (every certificate
    re-issued) does not carry the old CA's serials over."""
    state_dir = tmp_path / "data"
    ca = pki.load_ca(ca_dir)
    revocation.revoke(ca.certificate, ca.key, ca_dir, [1])
    assert ServerSecurity.mutual_tls(
        TlsFiles.in_directory(ca_dir, "node-eu-west-1"), state_dir
    ).revoked() == {1}
    new_dir = tmp_path / "new-ca"
    new_dir.mkdir()
    new = pki.init_ca(new_dir, "prod")
    pki.issue_node(new, "eu-west-1", "eu-west-1").write(new_dir, "node-eu-west-1")
    assert (
        ServerSecurity.mutual_tls(TlsFiles.in_directory(new_dir, "node-eu-west-1"), state_dir).revoked()
        == set()
    )


def test_an_unreadable_state_stops_the_daemon_and_says_what_to_do(ca_dir: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "data"
    state_dir.mkdir()
    (state_dir / revocation.REVOKED_STATE).write_text("{not json")
    with pytest.raises(InvalidArgument, match="is not a readable revocation state") as refused:
        ServerSecurity.mutual_tls(TlsFiles.in_directory(ca_dir, "node-eu-west-1"), state_dir)
    assert "remove it to start from ca.crl alone" in refused.value.message


def test_a_fault_in_the_certificate_files_does_not_keep_a_new_list_out(ca_dir: Path) -> None:
    """The list is read apart from the certificate and key: a key file whose mode drifted (which
    stops a certificate reload) does not stop a revocation."""
    files = TlsFiles.in_directory(ca_dir, "node-eu-west-1")
    security = ServerSecurity.mutual_tls(files)
    files.key.chmod(0o640)
    ca = pki.load_ca(ca_dir)
    revocation.revoke(ca.certificate, ca.key, ca_dir, [5])
    security._next_look = 0.0
    assert security.revoked() == {5}


def test_a_new_ca_met_while_running_is_read_even_when_the_state_is_unreadable(
    ca_dir: Path, tmp_path: Path
) -> None:
    """The state stops a daemon at start; met for a CA that replaced another while running, it
    must not keep that CA's revocations out (it is logged, and the CA starts from its list)."""
    files = TlsFiles.in_directory(ca_dir, "node-eu-west-1")
    state_dir = tmp_path / "data"
    security = ServerSecurity.mutual_tls(files, state_dir)
    (state_dir / revocation.REVOKED_STATE).parent.mkdir(parents=True, exist_ok=True)
    (state_dir / revocation.REVOKED_STATE).write_text("{not json")
    # The CA is replaced under the running daemon (every certificate issued again), and the new
    # CA revokes one.
    for name in ("ca.crt", "ca.key", "node-eu-west-1.crt", "node-eu-west-1.key"):
        (ca_dir / name).unlink()
    new = pki.init_ca(ca_dir, "prod")
    pki.issue_node(new, "eu-west-1", "eu-west-1").write(ca_dir, "node-eu-west-1")
    revocation.revoke(new.certificate, new.key, ca_dir, [9])
    material = security.material
    assert material is not None and material.refresh() is not None
    security._next_look = 0.0
    assert security.revoked() == {9}
