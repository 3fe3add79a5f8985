"""A daemon's /metrics port: HTTPS with a client certificate of the cluster (mutual TLS), or
plaintext on a daemon started with --insecure.

Like every other port, /metrics is authenticated and encrypted: the series name the cluster's
regions, nodes, namespaces and rules, and show what runs where. The scraper presents a client
certificate signed by the cluster CA, and only the cluster's own processes and the roles that
watch or run the cluster may read (`monitor`, `operator`, `auditor`: the rule of health and
reflection, domicile.authz.operational). `domicile up` issues a `prometheus` client certificate
with the `monitor` role, which may call no RPC at all.

Bounds, so that no client holds up a scrape. The handshake runs on the connection's own thread,
not on the accepting one. A connection has CONNECTION_DEADLINE_S in all, handshake and request
together, then it is closed whatever it is doing. Connections still shaking hands (nobody
authenticated yet) are bounded apart: HANDSHAKES_MAX in all and HANDSHAKES_PER_HOST_MAX from one
address, so silent or slow clients from one host cannot take the slots of a scraper. Requests of
authenticated peers are bounded by REQUESTS_MAX. A connection past a bound is closed at once and
counted (`busy`).

Certificates rotate without a restart: each connection looks at the files first (a stat each)
and a valid replacement is used from then on (domicile.identity.reloading). A certificate the
cluster's revocation list revokes is refused (403, logged at WARNING with its serial number).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import urllib.request
from collections.abc import Callable
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

# A scrape is one small request: a connection that takes longer in all (handshake, request and
# answer) is closed. Prometheus' own scrape timeout is 10 s by default.
CONNECTION_DEADLINE_S = 10.0
# Connections still shaking hands, in all and from one address; requests of authenticated peers
# served at once (Prometheus opens one connection per target and scrape).
HANDSHAKES_MAX = 64
HANDSHAKES_PER_HOST_MAX = 8
REQUESTS_MAX = 16
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

    def __init__(self, material: ReloadingMaterial, revoked: Callable[[], frozenset[int]]) -> None:
        self._material = material
        self.revoked = revoked
        self._lock = threading.Lock()
        self._built_from = material.current
        self._context = _context(material.current, material.files)

    @property
    def cluster(self) -> str:
        return self._material.current.cluster

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
        self._lock = threading.Lock()
        self._handshakes = 0
        self._handshakes_by_host: dict[str, int] = {}
        self._requests = threading.BoundedSemaphore(REQUESTS_MAX)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """On the accepting thread: admits the connection to a handshake slot, or closes it."""
        host = str(client_address[0])
        with self._lock:
            admitted = (
                self._handshakes < HANDSHAKES_MAX
                and self._handshakes_by_host.get(host, 0) < HANDSHAKES_PER_HOST_MAX
            )
            if admitted:
                self._handshakes += 1
                self._handshakes_by_host[host] = self._handshakes_by_host.get(host, 0) + 1
        if not admitted:
            self.refused.labels("busy").inc()
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._handshake_done(host)
            raise

    def _handshake_done(self, host: str) -> None:
        with self._lock:
            self._handshakes -= 1
            left = self._handshakes_by_host[host] - 1
            if left:
                self._handshakes_by_host[host] = left
            else:
                del self._handshakes_by_host[host]

    def finish_request(self, request: Any, client_address: Any) -> None:
        # One deadline for the whole connection: a peer that trickles bytes cannot hold it.
        # (The TLS socket takes over the connection's descriptor: the one to cut is the last.)
        current: list[socket.socket] = [request]
        deadline = threading.Timer(CONNECTION_DEADLINE_S, lambda: _cut(current[-1]))
        deadline.daemon = True
        deadline.start()
        try:
            self._serve(request, client_address, current)
        finally:
            deadline.cancel()

    def _serve(self, request: Any, client_address: Any, current: list[socket.socket]) -> None:
        host = str(client_address[0])
        tls = self.tls
        request.settimeout(CONNECTION_DEADLINE_S)
        secured: ssl.SSLSocket | None = None
        try:
            if tls is not None:
                context = tls.context()
                secured = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                current.append(secured)
                secured.do_handshake()
        except (OSError, ssl.SSLError) as error:
            # No client certificate, one of another CA, a plaintext client, or silence.
            self.refused.labels("handshake").inc()
            log.debug("refused a /metrics connection from %s: %s", client_address, error)
            if secured is not None:
                secured.close()
            return
        finally:
            self._handshake_done(host)
        if not self._requests.acquire(blocking=False):
            self.refused.labels("busy").inc()
            if secured is not None:
                secured.close()
            return
        try:
            if secured is None:
                super().finish_request(request, client_address)
                return
            assert tls is not None
            refusal = self._refusal(secured, tls.cluster, tls.revoked())
            if refusal is None:
                super().finish_request(secured, client_address)
            else:
                reason, message = refusal
                self.refused.labels(reason).inc()
                if reason == "revoked":
                    # Whoever holds a revoked key is still trying: an operator must hear of it.
                    log.warning("refused a /metrics scrape from %s: %s", client_address[0], message)
                _forbidden(secured, message)
        except OSError:
            pass  # the scraper went away, or its deadline cut the connection
        finally:
            self._requests.release()
            if secured is not None:
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


def _cut(sock: socket.socket) -> None:
    """Ends a connection past its deadline: what its thread waits on returns at once."""
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


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
    registry: CollectorRegistry,
    host: str,
    port: int,
    tls: ReloadingMaterial | None,
    *,
    revoked: Callable[[], frozenset[int]] = frozenset,
    refused: Counter,
) -> MetricsEndpoint:
    """Starts /metrics of `registry` on host:port (port 0 picks one): mutual TLS with `tls` (the
    serial numbers `revoked()` names are refused), else plaintext (logged at WARNING, like every
    plaintext port). `refused` counts the connections it refuses, by reason (label `reason`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = _Server((host, port), family, _Tls(tls, revoked) if tls is not None else None, refused)
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


class MetricsServing:
    """Serving a daemon's registry on /metrics, for its metrics object (node.metrics,
    coordinator.metrics), which sets `registry` and makes `metrics_refused` with refused_counter."""

    registry: CollectorRegistry
    metrics_refused: Counter
    _endpoint: MetricsEndpoint | None = None

    def serve(
        self,
        host: str,
        port: int,
        tls: ReloadingMaterial | None,
        revoked: Callable[[], frozenset[int]] = frozenset,
    ) -> MetricsEndpoint:
        """Starts /metrics (mutual TLS with `tls`, the daemon's own files, refusing the serial
        numbers `revoked()` names; plaintext without); its port is the bound one (useful with
        port 0)."""
        self._endpoint = serve(self.registry, host, port, tls, revoked=revoked, refused=self.metrics_refused)
        return self._endpoint

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None


def refused_counter(registry: CollectorRegistry) -> Counter:
    """domicile_metrics_refused_total of a daemon's registry (by reason)."""
    return Counter("domicile_metrics_refused_total", REFUSED_HELP, ["reason"], registry=registry)


REFUSED_HELP = (
    "Connections to /metrics refused: handshake (no or a foreign client certificate, or none in "
    "time), identity (a certificate that names no identity of the cluster), revoked (by the "
    "cluster's revocation list), role (a client without a role that may read), busy (past a "
    "bound on connections)."
)


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
