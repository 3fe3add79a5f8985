"""domicile certs init / issue: files written, what is printed, and bad input refused with exit 2."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509

from domicile.cli import certs
from domicile.cli.main import main
from domicile.identity.certificate import principal_from_certificate
from domicile.identity.principal import ROLE_NAMES, PrincipalKind, Role


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ca_dir(tmp_path, capsys):
    directory = tmp_path / "pki"
    assert run(capsys, "certs", "init", "--dir", str(directory), "--cluster", "prod")[0] == 0
    return directory


def test_the_cli_knows_the_same_roles_as_the_library():
    assert certs.ROLES == ROLE_NAMES


def test_init_prints_where_the_files_went_and_refuses_a_second_ca(tmp_path, capsys):
    directory = tmp_path / "pki"
    code, out, _ = run(capsys, "certs", "init", "--dir", str(directory), "--cluster", "prod", "--days", "30")
    assert code == 0
    assert out.startswith("CA of cluster prod, valid until ")
    assert f"certificate  {directory / 'ca.crt'}" in out
    assert f"key          {directory / 'ca.key'} (mode 0600" in out
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600

    code, _, err = run(capsys, "certs", "init", "--dir", str(directory), "--cluster", "prod")
    assert code == 2
    assert "error: a CA exists already" in err and "--force" in err
    assert run(capsys, "certs", "init", "--dir", str(directory), "--cluster", "prod", "--force")[0] == 0


def test_issue_a_node_certificate_with_hosts_into_an_out_dir(ca_dir, tmp_path, capsys):
    out_dir = tmp_path / "host-a"
    code, out, _ = run(
        capsys, "certs", "issue", "--dir", str(ca_dir), "--node", "n1", "--region", "eu-west-1",
        "--host", "node1.internal", "--host", "10.0.0.7", "--days", "7", "--out-dir", str(out_dir),
    )  # fmt: skip
    assert code == 0
    assert out.startswith("issued spiffe://prod/region/eu-west-1/node/n1, valid until ")
    assert f"certificate  {out_dir / 'node-n1.crt'}" in out
    assert f"CA           {out_dir / 'ca.crt'}" in out
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "ca.crt",
        "node-n1.audit.key",
        "node-n1.crt",
        "node-n1.key",
    ]
    assert (out_dir / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate((out_dir / "node-n1.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node1.internal" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 7


def test_issue_coordinator_and_client_with_roles(ca_dir, capsys):
    assert run(capsys, "certs", "issue", "--dir", str(ca_dir), "--coordinator")[0] == 0
    principal = principal_from_certificate((ca_dir / "coordinator.crt").read_bytes(), "prod")
    assert principal.kind is PrincipalKind.COORDINATOR

    code, out, _ = run(
        capsys, "certs", "issue", "--dir", str(ca_dir), "--client", "alice", "--roles", "dpo,auditor"
    )
    assert code == 0 and "spiffe://prod/client/alice" in out
    principal = principal_from_certificate((ca_dir / "client-alice.crt").read_bytes(), "prod")
    assert principal.roles == {Role.DPO, Role.AUDITOR}
    assert stat.S_IMODE((ca_dir / "client-alice.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--node", "n1"], "--node needs --region"),
        (["--coordinator", "--region", "eu-west-1"], "--region goes with --node only"),
        (["--coordinator", "--roles", "dpo"], "--roles goes with --client only"),
        (["--client", "a", "--host", "h"], "--host goes with --node or --coordinator only"),
        (
            ["--client", "a", "--roles", "root"],
            "unknown role root; allowed: a comma-separated list of app, dpo",
        ),
        (["--client", "a b"], "client name 'a b' is not allowed"),
        (["--node", "N_1", "--region", "eu-west-1"], "node id 'N_1' is not allowed"),
        (["--node", "n1", "--region", "eu-west-1", "--host", "a b"], "neither an IP address nor a DNS name"),
        (["--coordinator", "--days", "0"], "0 days is outside 1..36500"),
        (["--coordinator", "--days", "20000"], "would outlive the CA"),
        (["--coordinator", "--client", "a"], "not allowed with argument"),
        ([], "one of the arguments --node --coordinator --client is required"),
    ],
)
def test_bad_input_exits_2_saying_what_is_allowed(ca_dir, capsys, argv, says):
    code, out, err = run(capsys, "certs", "issue", "--dir", str(ca_dir), *argv)
    assert code == 2
    assert says in err
    assert out == ""


def test_bad_cluster_name_and_missing_ca(tmp_path, capsys):
    code, _, err = run(capsys, "certs", "init", "--dir", str(tmp_path / "x"), "--cluster", "Prod_1")
    assert code == 2 and "cluster name 'Prod_1' is not allowed" in err
    code, _, err = run(capsys, "certs", "issue", "--dir", str(tmp_path / "none"), "--coordinator")
    assert code == 2 and "CA certificate" in err and "does not exist" in err


def test_issue_prints_the_serial_and_copies_the_revocation_list_to_an_out_dir(ca_dir, tmp_path, capsys):
    code, out, _ = run(capsys, "certs", "issue", "--dir", str(ca_dir), "--client", "old", "--roles", "app")
    assert code == 0
    serial = x509.load_pem_x509_certificate((ca_dir / "client-old.crt").read_bytes()).serial_number
    assert f"  serial       0x{serial:x}\n" in out
    assert run(capsys, "certs", "revoke", "--dir", str(ca_dir), "--serial", f"0x{serial:x}")[0] == 0
    out_dir = tmp_path / "host-b"
    argv = (
        "certs",
        "issue",
        "--dir",
        str(ca_dir),
        "--client",
        "new",
        "--roles",
        "app",
        "--out-dir",
        str(out_dir),
    )
    assert run(capsys, *argv)[0] == 0
    assert (out_dir / "ca.crl").read_bytes() == (ca_dir / "ca.crl").read_bytes()


def test_revoke_by_file_and_by_serial_says_what_changed(ca_dir, capsys):
    for name in ("a", "b"):
        assert run(capsys, "certs", "issue", "--dir", str(ca_dir), "--client", name, "--roles", "app")[0] == 0
    a = x509.load_pem_x509_certificate((ca_dir / "client-a.crt").read_bytes()).serial_number
    b = x509.load_pem_x509_certificate((ca_dir / "client-b.crt").read_bytes()).serial_number
    code, out, _ = run(
        capsys, "certs", "revoke", "--dir", str(ca_dir), "--cert", str(ca_dir / "client-a.crt")
    )
    assert code == 0
    assert f"revoked 0x{a:x} ({ca_dir / 'client-a.crt'})" in out
    assert "1 revoked certificate\n" in out
    code, out, _ = run(
        capsys,
        "certs",
        "revoke",
        "--dir",
        str(ca_dir),
        "--cert",
        str(ca_dir / "client-a.crt"),
        "--serial",
        f"{b:x}",
    )
    assert code == 0
    assert f"already revoked 0x{a:x}" in out and f"revoked 0x{b:x}\n" in out
    assert "2 revoked certificates" in out
    crl = x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes())
    assert {entry.serial_number for entry in crl} == {a, b}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ((), "name what to revoke: --cert FILE or --serial HEX"),
        (("--serial", "xyz"), "serial 'xyz' is not a hexadecimal number"),
        (("--cert", "/nonexistent/x.crt"), "/nonexistent/x.crt"),
        (("--cert", "CA"), "is the CA's own certificate: a CA cannot revoke itself"),
    ],
)
def test_revoke_refuses_bad_input_and_writes_nothing(ca_dir, capsys, argv, says):
    argv = tuple(str(ca_dir / "ca.crt") if a == "CA" else a for a in argv)
    code, _, err = run(capsys, "certs", "revoke", "--dir", str(ca_dir), *argv)
    assert code == 2 and says in err
    assert not (ca_dir / "ca.crl").exists()


def test_revoke_refuses_a_certificate_of_another_ca(ca_dir, tmp_path, capsys):
    other = tmp_path / "other"
    assert run(capsys, "certs", "init", "--dir", str(other), "--cluster", "prod")[0] == 0
    assert run(capsys, "certs", "issue", "--dir", str(other), "--client", "x", "--roles", "app")[0] == 0
    code, _, err = run(capsys, "certs", "revoke", "--dir", str(ca_dir), "--cert", str(other / "client-x.crt"))
    assert code == 2 and "is not issued by the CA in" in err
    assert not (ca_dir / "ca.crl").exists()
