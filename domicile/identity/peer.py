"""The verified identity of the peer of a call, from the server's side."""

from __future__ import annotations

from typing import Any

from domicile.errors import Unauthenticated
from domicile.identity.certificate import principal_from_certificate
from domicile.identity.principal import ExpectedPeer, Principal


def peer_principal(context: Any, cluster: str) -> Principal:
    """The principal of the certificate the peer of `context` (a grpc.aio.ServicerContext) proved.

    Only a mutual-TLS port verifies that certificate; on a plaintext port there is none, and that
    is refused rather than read as anonymous.
    """
    auth: dict[str, list[bytes]] = context.auth_context() or {}
    if auth.get("transport_security_type") != [b"ssl"]:
        raise Unauthenticated("the connection is not TLS, so the peer is not authenticated")
    certificates = auth.get("x509_pem_cert")
    if not certificates:
        raise Unauthenticated("the peer presented no client certificate")
    return principal_from_certificate(certificates[0], cluster)


def require_peer(context: Any, cluster: str, expected: ExpectedPeer) -> Principal:
    """The peer's principal if it is `expected` (PermissionDenied otherwise)."""
    return expected.check(peer_principal(context, cluster))
