"""The verified identity of the peer of a call, from the server's side."""

from __future__ import annotations

from typing import Any

from domicile.errors import Unauthenticated
from domicile.identity.certificate import principal_from_certificate
from domicile.identity.principal import ExpectedPeer, Principal

# The call whose auth context was read last, and that context: (call context, its auth context).
# The per-peer bound and the authentication of a call each read it, one right after the other
# (nothing awaits between them), and gRPC builds a new dict with a copy of the peer's
# certificate on every read. The call context itself is kept, not its id(), so that a later
# call can never be taken for it; it is released by the next call's read.
_last_read: tuple[Any, dict[str, list[bytes]]] = (None, {})


def auth_context(context: Any) -> dict[str, list[bytes]]:
    """The auth context of a call (a grpc.aio.ServicerContext): the peer's verified properties,
    such as `transport_security_type` and `x509_pem_cert`; empty on a plaintext port. Read from
    gRPC once per call."""
    global _last_read
    last = _last_read
    if last[0] is context:
        return last[1]
    auth: dict[str, list[bytes]] = context.auth_context() or {}
    _last_read = (context, auth)
    return auth


def peer_principal(context: Any, cluster: str) -> Principal:
    """The principal of the certificate the peer of `context` (a grpc.aio.ServicerContext) proved.

    Only a mutual-TLS port verifies that certificate; on a plaintext port there is none, and that
    is refused rather than read as anonymous.
    """
    auth = auth_context(context)
    if auth.get("transport_security_type") != [b"ssl"]:
        raise Unauthenticated("the connection is not TLS, so the peer is not authenticated")
    certificates = auth.get("x509_pem_cert")
    if not certificates:
        raise Unauthenticated("the peer presented no client certificate")
    return principal_from_certificate(certificates[0], cluster)


def require_peer(context: Any, cluster: str, expected: ExpectedPeer) -> Principal:
    """The peer's principal if it is `expected` (PermissionDenied otherwise)."""
    return expected.check(peer_principal(context, cluster))
