"""Causal contexts as opaque tokens, authenticated with a cluster key and bound to a record.

A node hands a client its causal context as a token; the client passes it back unchanged to say
which versions a write supersedes. The token is the context's protobuf form after a version
byte and an HMAC-SHA256 over the namespace, the key and the context under the cluster's context
key, so a client cannot forge a context (one naming counters a node never issued, to exhaust
them), alter one, or use one key's context for another. Every node of a cluster holds the same
key, so a token from one node verifies at any other.

A cluster may hold up to KEYS_MAX keys at once, so that its key can be replaced without
refusing the tokens clients hold: the first key issues every token, and a token verifies under
any of them (README "Rotating the context key").

Layout: version (1 byte, 1) | MAC (32 bytes) | CausalContext protobuf (deterministic).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError

from domicile.causality import CausalContext
from domicile.errors import InvalidArgument
from domicile.model import Limits
from domicile.v1 import record_pb2 as pb
from domicile.wire.records import context_from_pb, context_to_pb

TOKEN_VERSION = 1
_VERSION_BYTE = bytes([TOKEN_VERSION])
KEY_BYTES = 32
MAC_BYTES = 32
# Keys a node accepts at once: the issuing one and those of a rotation still under way. More
# would only make a token that verifies under none cost more MACs to refuse.
KEYS_MAX = 4
# Far above any context a node hands out (256 entries of a 63-character node id and a counter).
TOKEN_BYTES_MAX = 64 * 1024
_DOMAIN = b"domicile-context-token\x00"
_HOW = "pass the context_token of an earlier get, put or delete of this key, unchanged"


def is_token(data: bytes) -> bool:
    """Tells a token from the plain protobuf context older tools printed: a serialized context
    starts with a field tag (0x0a or 0x12) or is empty, never with the version byte."""
    return bool(data) and data[0] == TOKEN_VERSION


class ContextTokens:
    """Issues tokens under one cluster key and opens those of any of the cluster's keys."""

    def __init__(
        self,
        key: bytes,
        accepted: Sequence[bytes] = (),
        on_accepted: Callable[[int], None] | None = None,
    ) -> None:
        """`key` issues and verifies; `accepted` only verify (a rotation's other keys).
        on_accepted(position) is told of each token that verified under accepted[position - 2],
        position being the key's place in the key file (2 for the first accepted key): it tells
        an operator whether clients still present tokens of a key about to be removed."""
        keys = (key, *accepted)
        if len(keys) > KEYS_MAX:
            raise InvalidArgument(f"{len(keys)} context keys; at most {KEYS_MAX} are allowed")
        for each in keys:
            if len(each) != KEY_BYTES:
                raise InvalidArgument(f"a context key is {KEY_BYTES} bytes, not {len(each)}")
        if len(set(keys)) != len(keys):
            raise InvalidArgument("the context keys repeat a key; each must be different")
        # Keyed once: each MAC copies this state. The one-shot hmac.digest() looks the digest up
        # in OpenSSL and keys it again on every call, which in a serving node (its caches cold
        # between calls) cost 20-35 us a token, against 1-2 us for a copy.
        self._keyed = hmac.new(key, digestmod="sha256")
        self._accepted = tuple(hmac.new(each, digestmod="sha256") for each in accepted)
        self._on_accepted = on_accepted

    def _mac(self, namespace: str, key: str, payload: bytes) -> bytes:
        return _sign(self._keyed, _message(namespace, key, payload))

    def issue(self, namespace: str, key: str, context: CausalContext) -> bytes:
        return self.issue_pb(namespace, key, context_to_pb(context))

    def issue_pb(self, namespace: str, key: str, context: pb.CausalContext) -> bytes:
        """issue() for a context already in its protobuf form (an answer that carries the
        context beside its token builds that form once, for both)."""
        payload = context.SerializeToString(deterministic=True)
        return _VERSION_BYTE + self._mac(namespace, key, payload) + payload

    def open(self, namespace: str, key: str, token: bytes, limits: Limits) -> CausalContext:
        """The context of a token issued for (namespace, key) under this key; InvalidArgument
        for anything else, saying what to pass instead."""
        if len(token) > TOKEN_BYTES_MAX:
            raise InvalidArgument(
                f"context token is {len(token)} bytes; at most {TOKEN_BYTES_MAX} are allowed: {_HOW}"
            )
        if len(token) < 1 + MAC_BYTES or token[0] != TOKEN_VERSION:
            raise InvalidArgument(f"malformed context token: {_HOW}")
        mac, payload = token[1 : 1 + MAC_BYTES], token[1 + MAC_BYTES :]
        if not self._verifies(mac, _message(namespace, key, payload)):
            raise InvalidArgument(
                f"context token does not verify for {namespace}/{key}: it was altered, made for "
                f"another key, or made under another cluster key; {_HOW}"
            )
        try:
            msg = pb.CausalContext.FromString(payload)
        except DecodeError:
            raise InvalidArgument(f"malformed context token: {_HOW}") from None
        return context_from_pb(msg, limits)

    def _verifies(self, mac: bytes, message: bytes) -> bool:
        # The issuing key first: outside a rotation it is the only one, and during one it made
        # every token but those clients kept from before.
        if hmac.compare_digest(mac, _sign(self._keyed, message)):
            return True
        for position, keyed in enumerate(self._accepted, start=2):
            if hmac.compare_digest(mac, _sign(keyed, message)):
                if self._on_accepted is not None:
                    self._on_accepted(position)
                return True
        return False


def _message(namespace: str, key: str, payload: bytes) -> bytes:
    ns = namespace.encode("utf-8", "surrogatepass")
    k = key.encode("utf-8", "surrogatepass")
    # Length prefixes keep (namespace, key) pairs apart: ("a", "bc") never signs as ("ab", "c").
    return _DOMAIN + struct.pack(">I", len(ns)) + ns + struct.pack(">I", len(k)) + k + payload


def _sign(keyed: hmac.HMAC, message: bytes) -> bytes:
    mac = keyed.copy()
    mac.update(message)
    return mac.digest()
