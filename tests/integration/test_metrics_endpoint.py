"""A daemon's /metrics port: mutual TLS with the cluster CA, readable only by the cluster's own
processes and the roles that watch or run it, never blocked by a silent client, following
rotated certificates; plaintext only when the daemon is insecure, and then said loudly."""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry, Gauge

from domicile import metrics_endpoint
from domicile.identity import pki, revocation
from domicile.identity.credentials import ServerSecurity
from domicile.identity.principal import Role
from domicile.identity.tls_files import TlsFiles

CLUSTER = "metrics-test"
TIMEOUT_S = 10.0
# Well under a connection's deadline: what a scrape that waited on another connection misses.
QUICK_S = 2.0


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tls"
    directory.mkdir()
    ca = pki.init_ca(directory, CLUSTER)
    pki.issue_node(ca, "eu-west-1", "eu-west-1").write(directory, "node-eu-west-1")
    for name, roles in {
        "prometheus": (Role.MONITOR,),
        "ops": (Role.OPERATOR,),
        "audit": (Role.AUDITOR,),
        "trading": (Role.APP,),
        "dpo": (Role.DPO,),
    }.items():
        pki.issue_client(ca, name, roles).write(directory, f"client-{name}")
    return directory


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("domicile_test_up", "A series to find on the page.", registry=registry).set(7)
    return registry


@pytest.fixture
def security(tls_dir: Path) -> ServerSecurity:
    """What a daemon's ports share: its files, and the revocations in force."""
    return ServerSecurity.mutual_tls(TlsFiles.in_directory(tls_dir, "node-eu-west-1"))


def start(registry: CollectorRegistry, security: ServerSecurity | None) -> metrics_endpoint.MetricsEndpoint:
    refused = metrics_endpoint.refused_counter(registry)
    if security is None:
        return metrics_endpoint.serve(registry, "127.0.0.1", 0, None, refused=refused)
    return metrics_endpoint.serve(
        registry, "127.0.0.1", 0, security.material, revoked=security.revoked, refused=refused
    )


@pytest.fixture
def endpoint(
    security: ServerSecurity, registry: CollectorRegistry
) -> Iterator[metrics_endpoint.MetricsEndpoint]:
    served = start(registry, security)
    yield served
    served.close()


def url(endpoint: metrics_endpoint.MetricsEndpoint) -> str:
    return f"{endpoint.scheme}://127.0.0.1:{endpoint.port}/metrics"


def client(tls_dir: Path, name: str) -> TlsFiles:
    return TlsFiles.in_directory(tls_dir, f"client-{name}")


def refused(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("domicile_metrics_refused_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("name", ["prometheus", "ops", "audit"])
def test_monitors_operators_and_auditors_read_it_over_mutual_tls(
    endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path, name: str
) -> None:
    assert endpoint.scheme == "https"
    page = metrics_endpoint.scrape(url(endpoint), client(tls_dir, name), TIMEOUT_S)
    assert "domicile_test_up 7.0" in page


def test_a_node_of_the_cluster_reads_it(endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path) -> None:
    page = metrics_endpoint.scrape(url(endpoint), TlsFiles.in_directory(tls_dir, "node-eu-west-1"), TIMEOUT_S)
    assert "domicile_test_up 7.0" in page


@pytest.mark.parametrize("name", ["trading", "dpo"])
def test_a_client_without_a_role_that_watches_the_cluster_is_forbidden(
    endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path, registry: CollectorRegistry, name: str
) -> None:
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        metrics_endpoint.scrape(url(endpoint), client(tls_dir, name), TIMEOUT_S)
    assert forbidden.value.code == 403
    message = forbidden.value.read().decode()
    assert f"spiffe://{CLUSTER}/client/{name} may not read /metrics" in message
    assert "clients with role auditor or monitor or operator" in message
    assert refused(registry, "role") == 1


def test_a_client_without_a_certificate_is_refused_in_the_handshake(
    endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path, registry: CollectorRegistry
) -> None:
    anonymous = ssl.create_default_context(cafile=str(tls_dir / pki.CA_CERT))
    with (
        socket.create_connection(("127.0.0.1", endpoint.port), timeout=TIMEOUT_S) as raw,
        anonymous.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        # TLS 1.3: the server's refusal of the missing certificate arrives with the first read.
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        tls.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        if not tls.recv(1024):
            raise ConnectionResetError("closed without an answer")
    _wait_for(lambda: refused(registry, "handshake") == 1)


def test_a_certificate_of_another_ca_is_refused(
    endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path, tmp_path: Path, registry: CollectorRegistry
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ca = pki.init_ca(other, CLUSTER)
    pki.issue_client(ca, "prometheus", (Role.MONITOR,)).write(other, "client-prometheus")
    # The foreign client trusts our CA for the server, so only its own certificate is wrong.
    foreign = TlsFiles(
        tls_dir / pki.CA_CERT, other / "client-prometheus.crt", other / "client-prometheus.key"
    )
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        metrics_endpoint.scrape(url(endpoint), foreign, TIMEOUT_S)
    _wait_for(lambda: refused(registry, "handshake") == 1)


def test_plaintext_http_to_the_tls_port_gets_nothing(
    endpoint: metrics_endpoint.MetricsEndpoint, registry: CollectorRegistry
) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as failed:
        metrics_endpoint.scrape(f"http://127.0.0.1:{endpoint.port}/metrics", None, TIMEOUT_S)
    assert "domicile_test_up" not in str(failed.value)
    _wait_for(lambda: refused(registry, "handshake") == 1)


def test_an_https_url_needs_a_client_certificate(endpoint: metrics_endpoint.MetricsEndpoint) -> None:
    with pytest.raises(ValueError, match="needs a client certificate of the cluster"):
        metrics_endpoint.scrape(url(endpoint), None, TIMEOUT_S)


def test_a_silent_connection_does_not_hold_up_a_scrape(
    endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path
) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=TIMEOUT_S):
        # Connected, says nothing: its handshake waits on its own thread. Were it on the
        # accepting thread, this scrape would wait for the connection's whole deadline.
        started = time.monotonic()
        page = metrics_endpoint.scrape(url(endpoint), client(tls_dir, "prometheus"), QUICK_S)
    assert "domicile_test_up 7.0" in page
    assert time.monotonic() - started < QUICK_S


def test_silent_connections_from_one_host_leave_room_for_a_scraper_of_another(
    endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path, registry: CollectorRegistry
) -> None:
    """Connections still shaking hands are bounded per address: a host holding its share is
    refused more (counted as busy), and a scraper from another address is served at once."""
    silent = [
        _connect_from("127.0.0.3", endpoint.port) for _ in range(metrics_endpoint.HANDSHAKES_PER_HOST_MAX)
    ]
    try:
        # Each silent connection holds a handshake slot of its host once the server accepted it.
        _wait_for(lambda: _one_more_is_closed(endpoint.port, "127.0.0.3"))
        assert refused(registry, "busy") >= 1
        page = _scrape_from("127.0.0.2", endpoint.port, client(tls_dir, "prometheus"))
        assert "domicile_test_up 7.0" in page
    finally:
        for sock in silent:
            sock.close()
    # Their handshakes end when they close, and the host's slots come back.
    _wait_for(lambda: not _one_more_is_closed(endpoint.port, "127.0.0.3"))


def test_a_peer_that_trickles_its_request_is_cut_at_the_connection_deadline(
    endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline is the connection's, not each read's: a byte every half second (each read
    well within any per-read timeout) does not keep it open."""
    monkeypatch.setattr(metrics_endpoint, "CONNECTION_DEADLINE_S", 1.0)
    context = metrics_endpoint.client_context(client(tls_dir, "trading"))
    started = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", endpoint.port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        contextlib.suppress(OSError),
    ):
        for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 40:
            tls.sendall(bytes([byte]))
            time.sleep(0.5)
            if time.monotonic() - started > 8:
                break
    assert time.monotonic() - started < 5, "the connection outlived its deadline"


def test_a_rotated_server_certificate_is_served_from_the_next_connection(
    endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path
) -> None:
    before = _served_serial(endpoint.port, tls_dir)
    ca = pki.load_ca(tls_dir)
    pki.issue_node(ca, "eu-west-1", "eu-west-1").write(tls_dir, "node-eu-west-1")
    after = _served_serial(endpoint.port, tls_dir)
    assert after != before
    assert "domicile_test_up 7.0" in metrics_endpoint.scrape(
        url(endpoint), client(tls_dir, "prometheus"), TIMEOUT_S
    )


def test_regression_a_rotation_another_port_noticed_first_is_served_too(
    security: ServerSecurity, tls_dir: Path, registry: CollectorRegistry
) -> None:
    """The gRPC ports share the endpoint's reloading material, and the first to look after new
    files are written is handed them; the endpoint must serve them all the same."""
    material = security.material
    assert material is not None
    served = start(registry, security)
    try:
        before = _served_serial(served.port, tls_dir)
        pki.issue_node(pki.load_ca(tls_dir), "eu-west-1", "eu-west-1").write(tls_dir, "node-eu-west-1")
        assert material.refresh() is not None  # as a gRPC handshake would, first
        assert _served_serial(served.port, tls_dir) != before
    finally:
        served.close()


def test_a_revoked_certificate_is_forbidden_and_said_so(
    endpoint: metrics_endpoint.MetricsEndpoint,
    security: ServerSecurity,
    tls_dir: Path,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prometheus = client(tls_dir, "prometheus")
    assert "domicile_test_up 7.0" in metrics_endpoint.scrape(url(endpoint), prometheus, TIMEOUT_S)
    ca = pki.load_ca(tls_dir)
    serial = x509.load_pem_x509_certificate(prometheus.cert.read_bytes()).serial_number
    revocation.revoke(ca.certificate, ca.key, tls_dir, [serial])
    security._next_look = 0.0  # the list is looked at once a second
    with (
        caplog.at_level(logging.WARNING, logger="domicile.metrics"),
        pytest.raises(urllib.error.HTTPError) as forbidden,
    ):
        metrics_endpoint.scrape(url(endpoint), prometheus, TIMEOUT_S)
    assert forbidden.value.code == 403
    assert f"(serial 0x{serial:x}) is revoked" in forbidden.value.read().decode()
    assert refused(registry, "revoked") == 1
    assert (
        f"refused a /metrics scrape from 127.0.0.1: the certificate of spiffe://{CLUSTER}/client/prometheus"
        in (caplog.text)
    )
    assert "domicile_test_up 7.0" in metrics_endpoint.scrape(url(endpoint), client(tls_dir, "ops"), TIMEOUT_S)


def test_an_insecure_daemon_serves_plaintext_and_says_so(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="domicile.metrics"):
        plain = start(registry, None)
    try:
        assert plain.scheme == "http"
        assert "domicile_test_up 7.0" in metrics_endpoint.scrape(url(plain), None, TIMEOUT_S)
        assert f"plaintext: development only; metrics port 127.0.0.1:{plain.port} has no TLS" in caplog.text
    finally:
        plain.close()


def _served_serial(port: int, tls_dir: Path) -> int:
    context = metrics_endpoint.client_context(client(tls_dir, "prometheus"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S, source_address=(source, 0))


def _scrape_from(source: str, port: int, files: TlsFiles) -> str:
    connection = http.client.HTTPSConnection(
        "127.0.0.1",
        port,
        context=metrics_endpoint.client_context(files),
        timeout=QUICK_S,
        source_address=(source, 0),
    )
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def _one_more_is_closed(port: int, source: str = "127.0.0.1") -> bool:
    with _connect_from(source, port) as extra:
        extra.settimeout(1.0)
        try:
            return extra.recv(1) == b""
        except TimeoutError:
            return False  # it got a slot and waits for a handshake: not yet full


def _scrapes(endpoint: metrics_endpoint.MetricsEndpoint, tls_dir: Path) -> bool:
    try:
        metrics_endpoint.scrape(url(endpoint), client(tls_dir, "prometheus"), TIMEOUT_S)
    except OSError:
        return False
    return True


def _wait_for(condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
