"""From configuration (flags, YAML keys, SDK arguments) to the one seam in credentials.py.

Every daemon and client picks its transport here, so the rule is the same everywhere: mutual TLS
from the files given, or plaintext only when asked for by name (`--insecure`), never because
files are missing. Asking for neither, or for both, is an error that says what to pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

from domicile.errors import InvalidArgument
from domicile.identity.credentials import Dialer, ServerSecurity
from domicile.identity.tls_files import TlsFiles

log = logging.getLogger("domicile.identity")

INSECURE_WARNING = (
    "%s runs with --insecure: plaintext gRPC, no authentication and no authorization on any "
    "call; development only"
)
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


def daemon_transport(
    files: TlsFiles | None, insecure: bool, what: str, stem: str
) -> tuple[ServerSecurity, Dialer]:
    """A daemon's port security and the dialer it reaches other daemons with. The files are
    checked now, so a bad setup fails at start; plaintext is logged at WARNING on every start."""
    if check_choice(files, insecure, what, stem):
        assert files is not None
        return ServerSecurity.mutual_tls(files), Dialer.mutual_tls(files)
    log.warning(INSECURE_WARNING, what)
    return ServerSecurity.plaintext(), Dialer.plaintext()


def client_dialer(
    files: TlsFiles | None, insecure: bool, what: str = "the client", stem: str = "client-NAME"
) -> Dialer:
    """What an SDK client or the CLI dials with."""
    if check_choice(files, insecure, what, stem):
        assert files is not None
        return Dialer.mutual_tls(files)
    log.warning(INSECURE_WARNING, what)
    return Dialer.plaintext()


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
