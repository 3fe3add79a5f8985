"""Transport settings as configuration gives them (flags, YAML keys, SDK arguments): which TLS
files, mutual TLS or an explicit plaintext, and the bearer-token settings. Checked when a config
is loaded; no gRPC here, so configuration modules can use it without pulling in a transport.
transport.py turns the choice into credentials.
"""

from __future__ import annotations

from pathlib import Path

from domicile.errors import InvalidArgument
from domicile.identity.tls_files import TlsFiles

NEEDS_TLS = (
    "no TLS files for {what}: pass --tls-dir DIR (holding ca.crt, {stem}.crt and {stem}.key) or "
    "--ca, --cert and --key; plaintext needs an explicit --insecure (development only)"
)


def tls_files(
    *,
    tls_dir: str | Path | None = None,
    ca: str | Path | None = None,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    stem: str,
    flags: tuple[str, str, str] = ("--ca", "--cert", "--key"),
) -> TlsFiles | None:
    """The files named by a directory (the layout `domicile certs issue` writes) and/or single
    paths (each overrides the directory's file); None when nothing is named."""
    if tls_dir:
        base = TlsFiles.in_directory(Path(tls_dir), stem)
        return TlsFiles(
            Path(ca) if ca else base.ca, Path(cert) if cert else base.cert, Path(key) if key else base.key
        )
    given = [name for name, value in zip(flags, (ca, cert, key), strict=True) if value]
    if not given:
        return None
    if len(given) != 3:
        missing = [name for name in flags if name not in given]
        raise InvalidArgument(
            f"{', '.join(given)} given without {', '.join(missing)}: pass all three, or --tls-dir"
        )
    return TlsFiles(Path(str(ca)), Path(str(cert)), Path(str(key)))


def check_choice(files: TlsFiles | None, insecure: bool, what: str, stem: str) -> bool:
    """True for mutual TLS, False for plaintext; InvalidArgument for neither or both."""
    if files is not None and insecure:
        raise InvalidArgument(
            f"{what}: --insecure and TLS files exclude each other; drop --insecure to use mutual TLS"
        )
    if files is None and not insecure:
        raise InvalidArgument(NEEDS_TLS.format(what=what, stem=stem))
    return files is not None


def check_token_settings(jwks: object, issuer: str, audience: str) -> None:
    """Bearer tokens need all three settings or none."""
    if jwks and not (issuer and audience):
        raise InvalidArgument(
            "--jwks needs --token-issuer and --token-audience: tokens are checked against both"
        )
    if not jwks and (issuer or audience):
        raise InvalidArgument(
            "--token-issuer and --token-audience need --jwks, the keys tokens are checked with"
        )
