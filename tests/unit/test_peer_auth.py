"""A call's auth context is read from gRPC once however many layers ask for it, and a call never
gets another call's."""

from __future__ import annotations

from domicile.identity.peer import auth_context


class Call:
    """Stands in for a grpc.aio.ServicerContext: counts its reads, and gives a new dict on each,
    as gRPC does."""

    def __init__(self, certificate: bytes) -> None:
        self.certificate = certificate
        self.reads = 0

    def auth_context(self) -> dict[str, list[bytes]]:
        self.reads += 1
        return {"transport_security_type": [b"ssl"], "x509_pem_cert": [self.certificate]}


def test_each_call_is_read_once_and_answered_with_its_own_peer() -> None:
    first, second = Call(b"first"), Call(b"second")
    assert auth_context(first)["x509_pem_cert"] == [b"first"]
    assert auth_context(first)["x509_pem_cert"] == [b"first"]
    assert first.reads == 1
    # The next call, even right after, is read for itself: a stale answer would authenticate it
    # as the previous caller.
    assert auth_context(second)["x509_pem_cert"] == [b"second"]
    assert second.reads == 1
    # Going back to an earlier call reads it again rather than trusting a remembered id().
    assert auth_context(first)["x509_pem_cert"] == [b"first"]
    assert first.reads == 2


class Plaintext:
    def auth_context(self) -> None:
        return None


def test_a_plaintext_call_has_an_empty_auth_context() -> None:
    assert auth_context(Plaintext()) == {}
