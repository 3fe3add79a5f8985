"""A daemon's /metrics port: HTTPS with a client certificate of the cluster (mutual TLS), or
plaintext on a daemon started with --insecure.

Like every other port, /metrics is authenticated and encrypted: the series name the cluster's
regions, nodes, namespaces and rules, and show what runs where. The scraper presents a client
certificate signed by the cluster CA, and only the cluster's own processes and the roles that
watch or run the cluster may read (`monitor`, `operator`, `auditor`: the rule of health and
reflection, domicile.authz.operational). `domicile up` issues a `prometheus` client certificate
with the `monitor` role, which may call no RPC at all.

The handshake runs on the connection's own thread with a timeout, not on the accepting one, so a
client that connects and stays silent holds one of at most CONNECTIONS_MAX threads and never
stops the others. Certificates rotate without a restart: each connection looks at the files
first (a stat each) and a valid replacement is used from then on (domicile.identity.reloading).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import urllib.request
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

from domicile.errors import DomicileError
from domicile.identity.certificate import principal_from_certificate
from domicile.identity.principal import WATCHING_ROLES, PrincipalKind
from domicile.identity.reloading import ReloadingMaterial
from domicile.identity.revocation import serial_text
from domicile.identity.tls_files import TlsFiles, TlsMaterial

log = logging.getLogger("domicile.metrics")

# A scrape is one small request: a connection that takes longer to shake hands or to send it is
# dropped. Prometheus' own scrape timeout is 10 s by default.
HANDSHAKE_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0
# Connections served at once; more are closed at once (Prometheus opens one per target).
CONNECTIONS_MAX = 16
# A refused scraper's request is read up to this many bytes before the answer.
REQUEST_BYTES_MAX = 8192
SCHEME_TLS = "https"
SCHEME_PLAINTEXT = "http"
# As domicile.identity.credentials says it of a plaintext gRPC port.
PLAINTEXT_WARNING = "plaintext: development only; metrics port %s has no TLS and no authentication"


def _context(material: TlsMaterial, files: TlsFiles) -> ssl.SSLContext:
    """A server context that demands a client certificate from the cluster CA. The CA comes from
    the checked material; the certificate and key from the files the material was read from (the
    ssl module loads a key from a file only), and a pair that does not load is refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=material.ca_pem.decode("ascii"))
    context.load_cert_chain(files.cert, files.key)
    return context


class _Tls:
    """The server context, rebuilt when the material in force changes."""

    def __init__(self, material: ReloadingMaterial) -> None:
        self._material = material
        self._lock = threading.Lock()
        self._built_from = material.current
        self._context = _context(material.current, material.files)

    @property
    def cluster(self) -> str:
        return self._material.current.cluster

    @property
    def revoked(self) -> frozenset[int]:
        return self._material.current.revoked

    def context(self) -> ssl.SSLContext:
        # The gRPC ports share the material and may be the ones to notice new files (refresh()
        # hands the new material to whoever looks first): what counts is what is in force now.
        self._material.refresh()
        current = self._material.current
        with self._lock:
            if current is not self._built_from:
                try:
                    self._context = _context(current, self._material.files)
                except (OSError, ssl.SSLError):
                    # Replaced again since the check: the next connection tries again.
                    log.warning(
                        "TLS files changed but could not be loaded for /metrics; keeping the previous ones"
                    )
                else:
                    self._built_from = current
            return self._context


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one every few seconds per scraper would drown the log."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # Bound by this process; a port still in TIME_WAIT from a previous run is free to take.
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        tls: _Tls | None,
        refused: Counter,
    ) -> None:
        self.address_family = family
        self.tls = tls
        self.refused = refused
        self._slots = threading.BoundedSemaphore(CONNECTIONS_MAX)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused.labels("busy").inc()
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        tls = self.tls
        if tls is None:
            request.settimeout(REQUEST_TIMEOUT_S)
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            secured = tls.context().wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as error:
            # No client certificate, one of another CA, a plaintext client, or silence.
            self.refused.labels("handshake").inc()
            log.debug("refused a /metrics connection from %s: %s", client_address, error)
            return
        try:
            secured.settimeout(REQUEST_TIMEOUT_S)
            refusal = self._refusal(secured, tls.cluster, tls.revoked)
            if refusal is None:
                super().finish_request(secured, client_address)
            else:
                reason, message = refusal
                self.refused.labels(reason).inc()
                _forbidden(secured, message)
        except OSError:
            pass  # the scraper went away
        finally:
            secured.close()

    @staticmethod
    def _refusal(secured: ssl.SSLSocket, cluster: str, revoked: frozenset[int]) -> tuple[str, str] | None:
        """Why the verified peer may not read /metrics (the counter's reason, the message), or
        None when it may."""
        der = secured.getpeercert(binary_form=True)
        if der is None:
            return "handshake", "no client certificate"
        try:
            certificate = x509.load_der_x509_certificate(der)
            principal = principal_from_certificate(certificate, cluster)
        except (DomicileError, ValueError) as error:
            return "identity", f"the client certificate names no identity of this cluster: {error}"
        if certificate.serial_number in revoked:
            return "revoked", (
                f"the certificate of {principal.uri} (serial {serial_text(certificate.serial_number)}) "
                "is revoked by the cluster's revocation list"
            )
        if (
            principal.kind in (PrincipalKind.NODE, PrincipalKind.COORDINATOR)
            or principal.roles & WATCHING_ROLES
        ):
            return None
        return "role", (
            f"principal {principal.uri} may not read /metrics: it is for the cluster's nodes, its "
            f"coordinator and clients with role {' or '.join(sorted(WATCHING_ROLES))}"
        )


def _forbidden(secured: ssl.SSLSocket, message: str) -> None:
    """Answers 403 once the request has arrived: closing with it unread would reset the
    connection, and the scraper would see a reset instead of the reason."""
    received = b""
    while b"\r\n\r\n" not in received and len(received) < REQUEST_BYTES_MAX:
        chunk = secured.recv(REQUEST_BYTES_MAX)
        if not chunk:
            return
        received += chunk
    body = (message + "\n").encode()
    secured.sendall(
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )


class MetricsEndpoint:
    """A running /metrics server; `close()` stops it."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        return SCHEME_PLAINTEXT if self._server.tls is None else SCHEME_TLS

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(
    registry: CollectorRegistry, host: str, port: int, tls: ReloadingMaterial | None
) -> MetricsEndpoint:
    """Starts /metrics on host:port (port 0 picks one): mutual TLS with `tls`, else plaintext
    (logged at WARNING, like every plaintext port). Counts the connections it refuses in
    `domicile_metrics_refused_total` of `registry`."""
    refused = Counter(
        "domicile_metrics_refused_total",
        "Connections to /metrics refused: handshake (no or a foreign client certificate, or none "
        "in time), identity (a certificate that names no identity of the cluster), revoked (by "
        "the cluster's revocation list), role (a client without a role that may read), busy (too "
        "many at once).",
        ["reason"],
        registry=registry,
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = _Server((host, port), family, _Tls(tls) if tls is not None else None, refused)
    app = make_wsgi_app(registry)
    server.set_app(app)
    # A short poll: close() waits for the loop to see the stop.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="domicile-metrics", daemon=True
    )
    thread.start()
    endpoint = MetricsEndpoint(server, thread)
    if tls is None:
        log.warning(PLAINTEXT_WARNING, f"{host}:{endpoint.port}")
    return endpoint


def scrape(url: str, files: TlsFiles | None, timeout_s: float) -> str:
    """The text of a /metrics page: over mutual TLS with the client certificate `files` for an
    https URL (the server's certificate checked against the cluster CA), plain for http."""
    context: ssl.SSLContext | None = None
    if url.startswith(f"{SCHEME_TLS}://"):
        if files is None:
            raise ValueError(f"{url} needs a client certificate of the cluster")
        context = client_context(files)
    with urllib.request.urlopen(url, timeout=timeout_s, context=context) as reply:
        body: bytes = reply.read()
    return body.decode()


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """What a scraper presents: its certificate and key, and the cluster CA it checks servers by."""
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(Path(files.cert), Path(files.key))
    return context
