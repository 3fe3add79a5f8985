"""From configuration (flags, YAML keys, SDK arguments) to the one seam in credentials.py.

Every daemon and client picks its transport here, so the rule is the same everywhere: mutual TLS
from the files given, or plaintext only when asked for by name (`--insecure`), never because
files are missing. Asking for neither, or for both, is an error that says what to pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

from domicile.identity.credentials import Dialer, ServerSecurity
from domicile.identity.settings import check_choice
from domicile.identity.tls_files import TlsFiles

log = logging.getLogger("domicile.identity")

INSECURE_WARNING = (
    "%s runs with --insecure: plaintext gRPC, no authentication and no authorization on any "
    "call; development only"
)


def daemon_transport(
    files: TlsFiles | None, insecure: bool, what: str, stem: str, state_dir: Path | None = None
) -> tuple[ServerSecurity, Dialer]:
    """A daemon's port security and the dialer it reaches other daemons with. The files are
    checked now, so a bad setup fails at start; plaintext is logged at WARNING on every start.
    `state_dir`: where the port keeps the revocations it holds in force (its data directory)."""
    if check_choice(files, insecure, what, stem):
        assert files is not None
        return ServerSecurity.mutual_tls(files, state_dir), Dialer.mutual_tls(files)
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
