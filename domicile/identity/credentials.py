"""The one place that decides how a gRPC port or channel is secured.

Servers require a client certificate from the cluster CA (mutual TLS) and pick up replaced
certificate files on the next connection. Dialers present their own certificate, check the
server's against the CA, and build the channels they open after a rotation from the new files.
Plaintext exists for development and logs a warning each time it is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from domicile.errors import InvalidArgument
from domicile.identity import spiffe
from domicile.identity.principal import ExpectedPeer, PrincipalKind
from domicile.identity.reloading import ReloadingMaterial
from domicile.identity.revocation import REVOCATION_LOOK_S, REVOKED_STATE, Revocations
from domicile.identity.tls_files import TlsFiles, TlsMaterial, Usage

log = logging.getLogger("domicile.identity")
PLAINTEXT_WARNING = "plaintext: development only; %s %s has no TLS and no authentication"
ChannelOptions = Sequence[tuple[str, Any]]


def _server_configuration(material: TlsMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem
    )


class ServerSecurity:
    """How a server's ports are secured: `mutual_tls(files)` or, for development, `plaintext()`."""

    def __init__(self, material: ReloadingMaterial | None, revocations: Revocations | None = None) -> None:
        self._material = material
        self._revocations = revocations
        self._next_look = 0.0

    @classmethod
    def mutual_tls(cls, files: TlsFiles, state_dir: Path | None = None) -> ServerSecurity:
        """Checks the files now (InvalidArgument naming the fault) so a bad setup fails at start.
        The revocations in force are kept in `state_dir` (the daemon's data directory) when given."""
        material = ReloadingMaterial(files, Usage.SERVER)
        state = state_dir / REVOKED_STATE if state_dir is not None else None
        return cls(material, Revocations(files.crl, material.current.ca_pem, state))

    @classmethod
    def plaintext(cls) -> ServerSecurity:
        return cls(None)

    @property
    def cluster(self) -> str | None:
        return self._material.current.cluster if self._material else None

    @property
    def material(self) -> ReloadingMaterial | None:
        """The files the ports serve (None in plaintext): the /metrics port serves them too."""
        return self._material

    def revoked(self) -> frozenset[int]:
        """The serial numbers revoked in force, as of at most REVOCATION_LOOK_S ago: asked on
        every call and stream message, it looks at the list that often (a stat), so a
        long-lived connection sees a new list too."""
        material, revocations = self._material, self._revocations
        if material is None or revocations is None:
            return frozenset()
        now = time.monotonic()
        if now >= self._next_look:
            self._next_look = now + REVOCATION_LOOK_S
            try:
                revocations.refresh(material.current.ca_pem)
            except Exception:  # the revocations in force stay; the next look tries again
                log.exception("checking the revocation list for changes failed")
        return revocations.serials

    def on_identity_refused(self, callback: Callable[[], None]) -> None:
        """`callback` runs (on a gRPC thread) each time replaced files naming another identity
        are refused (see reloading.py)."""
        if self._material is not None:
            self._material.on_identity_refused = callback

    def credentials(self) -> Any:
        """grpc.ServerCredentials that demand and verify a client certificate on every connection."""
        material = self._material
        if material is None:
            raise InvalidArgument("a plaintext server has no credentials; use add_port")

        def fetch() -> Any:
            # Runs on a gRPC thread before each handshake; None keeps the configuration in force.
            try:
                fresh = material.refresh()
            except Exception:  # an exception here would fail the handshake of a healthy server
                log.exception("checking the TLS files for changes failed")
                return None
            return _server_configuration(fresh) if fresh else None

        return grpc.dynamic_ssl_server_credentials(
            _server_configuration(material.current), fetch, require_client_authentication=True
        )

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind `address` (HOST:PORT, port 0 picks one) and return the port."""
        if self._material is None:
            port = int(server.add_insecure_port(address))
            log.warning(PLAINTEXT_WARNING, "server port", f"{address.rpartition(':')[0]}:{port}")
            return port
        return int(server.add_secure_port(address, self.credentials()))


class Dialer:
    """Opens channels to nodes and the coordinator: `mutual_tls(files)` or, for development, `plaintext()`."""

    def __init__(self, material: ReloadingMaterial | None) -> None:
        self._material = material
        self._credentials: Any = self._build(material.current) if material else None

    @classmethod
    def mutual_tls(cls, files: TlsFiles) -> Dialer:
        return cls(ReloadingMaterial(files, Usage.CLIENT))

    @classmethod
    def plaintext(cls) -> Dialer:
        return cls(None)

    @property
    def cluster(self) -> str | None:
        return self._material.current.cluster if self._material else None

    def on_identity_refused(self, callback: Callable[[], None]) -> None:
        """As ServerSecurity.on_identity_refused, for the files this dialer presents."""
        if self._material is not None:
            self._material.on_identity_refused = callback

    @staticmethod
    def _build(material: TlsMaterial) -> Any:
        return grpc.ssl_channel_credentials(
            root_certificates=material.ca_pem,
            private_key=material.key_pem,
            certificate_chain=material.cert_pem,
        )

    def credentials(self) -> Any:
        """Channel credentials from the current files (rebuilt when they changed); None in plaintext."""
        if self._material is None:
            return None
        fresh = self._material.refresh()
        if fresh is not None:
            self._credentials = self._build(fresh)
        return self._credentials

    def options(self, expected: ExpectedPeer | None = None) -> list[tuple[str, Any]]:
        """Channel options that make the handshake insist on `expected`.

        A fully named node ("node X of region R") or the coordinator is checked against the DNS
        name its certificate carries for its identity; anything vaguer is checked against the
        host dialled, like any TLS client does.
        """
        if expected is None or self._material is None:
            return []
        if expected.kind is PrincipalKind.CLIENT:
            raise InvalidArgument("a dialer expects a server: a node or the coordinator, not a client")
        cluster = self._material.current.cluster
        if expected.kind is PrincipalKind.COORDINATOR:
            return [("grpc.ssl_target_name_override", spiffe.server_name(expected.kind, cluster))]
        if expected.region and expected.node_id:
            name = spiffe.server_name(expected.kind, cluster, expected.region, expected.node_id)
            return [("grpc.ssl_target_name_override", name)]
        return []

    def channel(
        self, target: str, expected: ExpectedPeer | None = None, options: ChannelOptions = ()
    ) -> grpc.aio.Channel:
        """An asyncio channel to `target` (HOST:PORT)."""
        credentials = self.credentials()
        if credentials is None:
            log.warning(PLAINTEXT_WARNING, "channel to", target)
            return grpc.aio.insecure_channel(target, options=list(options))
        return grpc.aio.secure_channel(target, credentials, options=[*options, *self.options(expected)])

    def sync_channel(
        self, target: str, expected: ExpectedPeer | None = None, options: ChannelOptions = ()
    ) -> grpc.Channel:
        """A blocking channel to `target`, for the synchronous SDK and the CLI."""
        credentials = self.credentials()
        if credentials is None:
            log.warning(PLAINTEXT_WARNING, "channel to", target)
            return grpc.insecure_channel(target, options=list(options))
        return grpc.secure_channel(target, credentials, options=[*options, *self.options(expected)])
