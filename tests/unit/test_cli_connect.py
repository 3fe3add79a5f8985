"""How the CLI finds its TLS files, its token and its purpose (domicile/cli/connect.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from domicile.cli import connect
from domicile.cli.main import build_parser
from domicile.errors import InvalidArgument
from domicile.identity import pki
from domicile.identity.principal import Role


def args(*argv: str):
    return build_parser().parse_args(["status", *argv])


@pytest.fixture
def secure_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No DOMICILE_INSECURE (the other CLI tests set it), run from an empty directory."""
    monkeypatch.delenv("DOMICILE_INSECURE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_tls(directory: Path) -> None:
    ca = pki.init_ca(directory, "domicile")
    pki.issue_client(ca, "cli", [Role.OPERATOR]).write(directory, "client-cli")
    pki.issue_client(ca, "trading", [Role.APP]).write(directory, "client-trading")


def test_nothing_found_is_an_error_never_plaintext(secure_cli: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"no TLS files for domicile: pass --tls-dir DIR .*--insecure"):
        connect.dialer(args())
    assert connect.dialer(args("--insecure")).cluster is None


def test_the_directory_domicile_up_makes_is_found_from_where_it_ran(secure_cli: Path) -> None:
    make_tls(secure_cli / ".domicile" / "tls")
    dialer = connect.dialer(args())
    assert dialer.cluster == "domicile"
    assert dialer._material is not None
    assert dialer._material.current.principal.name == "cli"
    other = connect.dialer(args("--identity", "trading"))
    assert other._material is not None and other._material.current.principal.name == "trading"


def test_flags_and_variables_name_the_files(secure_cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = secure_cli / "elsewhere"
    make_tls(elsewhere)
    monkeypatch.setenv("DOMICILE_TLS_DIR", str(elsewhere))
    monkeypatch.setenv("DOMICILE_IDENTITY", "trading")
    parsed = args()
    assert connect.dialer(parsed).cluster == "domicile"
    files = ("--tls-ca", str(elsewhere / "ca.crt"), "--tls-cert", str(elsewhere / "client-cli.crt"))
    with pytest.raises(InvalidArgument, match="--tls-ca, --tls-cert given without --tls-key"):
        connect.dialer(build_parser().parse_args(["status", *files, "--tls-dir", ""]))
    with pytest.raises(InvalidArgument, match="--insecure and TLS files exclude each other"):
        connect.dialer(args("--insecure"))


def test_token_file_and_purpose_become_client_options(secure_cli: Path) -> None:
    make_tls(secure_cli / ".domicile" / "tls")
    (secure_cli / "token").write_text("a.b.c\n")
    options = connect.client_options(args("--token-file", "token", "--purpose", "settlement"))
    assert options["token"] == "a.b.c" and options["purpose"] == "settlement"
    with pytest.raises(InvalidArgument, match="cannot read --token-file missing"):
        connect.client_options(args("--token-file", "missing"))
