"""`domicile certs issue --node` binds the node's audit-head key, and keeps it when re-issuing."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.cli.main import main
from domicile.identity import audit_key


def _run(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)


def _bound(path: Path) -> bytes | None:
    return audit_key.bound_key(x509.load_pem_x509_certificate(path.read_bytes()))


def test_re_issuing_a_node_certificate_keeps_its_audit_key(tmp_path: Path) -> None:
    assert _run("certs", "init", "--dir", str(tmp_path), "--cluster", "prod") == 0
    issue = ("certs", "issue", "--dir", str(tmp_path), "--node", "n1", "--region", "eu-west-1")
    assert _run(*issue) == 0
    first = _bound(tmp_path / "node-n1.crt")
    key = audit_key.load_key(tmp_path / "node-n1.audit.key")
    assert first == audit_key.public_bytes(key)
    assert _run(*issue) == 0
    assert _bound(tmp_path / "node-n1.crt") == first


def test_audit_key_binds_a_key_the_node_already_signs_with(tmp_path: Path) -> None:
    assert _run("certs", "init", "--dir", str(tmp_path), "--cluster", "prod") == 0
    earlier = tmp_path / "data" / audit_key.DATA_DIR_KEY_FILE
    earlier.parent.mkdir()
    key = Ed25519PrivateKey.generate()
    earlier.write_bytes(audit_key.private_pem(key))
    earlier.chmod(0o600)
    issue = ("certs", "issue", "--dir", str(tmp_path), "--node", "n1", "--region", "eu-west-1")
    assert _run(*issue, "--audit-key", str(earlier)) == 0
    assert _bound(tmp_path / "node-n1.crt") == audit_key.public_bytes(key)
    assert _run("certs", "issue", "--dir", str(tmp_path), "--client", "c", "--audit-key", str(earlier)) == 2
