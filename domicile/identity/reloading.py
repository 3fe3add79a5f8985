"""TLS material that follows its files, so certificates rotate without a restart.

Replacing a certificate and its key takes two renames; a reader between them sees a new key with
the old certificate. Such a pair (or any pair that fails the checks) is not used: the last good
material stays in force, the fault is logged once, and the files are read again when they change.

Replacement files must name the identity they replace (the same SPIFFE ID of the same cluster):
a process is started as one identity, and its peers, its audit trail and its audit-head key
are bound to it. Files that name another are refused (ERROR, counted in
`identity_changes_refused` and reported to `on_identity_refused`) and the old ones stay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from domicile.identity.tls_files import TlsFiles, TlsMaterial, Usage

log = logging.getLogger("domicile.identity")


class ReloadingMaterial:
    def __init__(self, files: TlsFiles, usage: Usage) -> None:
        self.files = files
        self.usage = usage
        self._lock = threading.Lock()
        self._seen = files.fingerprint()
        # At start a fault is an error for the caller, not a log line.
        self._current = files.load(usage)
        self.identity_changes_refused = 0
        self.on_identity_refused: Callable[[], None] = lambda: None

    @property
    def current(self) -> TlsMaterial:
        return self._current

    def refresh(self) -> TlsMaterial | None:
        """The new material when the files changed into a valid set; None when nothing changed."""
        seen = self.files.fingerprint()
        # Called by gRPC on every new connection: a stat per file is all an unchanged set costs.
        if seen == self._seen:
            return None
        with self._lock:
            if seen == self._seen:
                return None
            self._seen = seen
            try:
                material = self.files.load(self.usage)
            except Exception as error:  # whatever the files hold, the server keeps serving
                message = getattr(error, "message", None) or repr(error)
                log.warning(
                    "TLS files changed but are not usable yet; keeping the previous ones: %s", message
                )
                return None
            current = self._current
            if (material.cluster, material.principal.uri) != (current.cluster, current.principal.uri):
                self.identity_changes_refused += 1
                log.error(
                    "TLS files %s changed to another identity (%s, was %s); keeping the certificate "
                    "of %s: an identity change needs a restart",
                    self.files.cert,
                    material.principal.uri,
                    current.principal.uri,
                    current.principal.uri,
                )
                self.on_identity_refused()
                return None
            self._current = material
            log.info(
                "TLS files reloaded: now %s, valid until %s",
                material.principal.uri,
                f"{material.not_after:%Y-%m-%d %H:%M} UTC",
            )
            return material
