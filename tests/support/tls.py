"""One development CA per test session and the certificates the tests' daemons and clients use.

Issuing a certificate costs a key generation and a signature, so each identity is issued once per
session and its files are shared; every file lives in one directory, in the layout
`domicile certs issue` writes, so a daemon finds its own by its identity (`--tls-dir`).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.identity.tls_files import TlsFiles

CLUSTER = "domicile"
# A client with every client role: what the tests' own calls run as.
TESTER = "tester"
ALL_CLIENT_ROLES = (Role.APP, Role.DPO, Role.AUDITOR, Role.OPERATOR)


class SessionPki:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="domicile-test-pki-"))
        atexit.register(shutil.rmtree, self.directory, True)
        self.ca = pki.init_ca(self.directory, CLUSTER)
        self._issued: set[str] = set()

    def _files(self, stem: str) -> TlsFiles:
        return TlsFiles.in_directory(self.directory, stem)

    def node(self, region: str, node_id: str) -> TlsFiles:
        stem = f"node-{node_id}"
        if stem not in self._issued:
            pki.issue_node(self.ca, region, node_id).write(self.directory, stem)
            self._issued.add(stem)
        return self._files(stem)

    def coordinator(self) -> TlsFiles:
        if "coordinator" not in self._issued:
            pki.issue_coordinator(self.ca).write(self.directory, "coordinator")
            self._issued.add("coordinator")
        return self._files("coordinator")

    def client(self, name: str = TESTER, roles: tuple[Role, ...] = ALL_CLIENT_ROLES) -> TlsFiles:
        stem = f"client-{name}"
        if stem not in self._issued:
            pki.issue_client(self.ca, name, roles).write(self.directory, stem)
            self._issued.add(stem)
        return self._files(stem)

    def dialer(self, name: str = TESTER, roles: tuple[Role, ...] = ALL_CLIENT_ROLES) -> Dialer:
        return Dialer.mutual_tls(self.client(name, roles))


@functools.cache
def session_pki() -> SessionPki:
    return SessionPki()
