"""Fuzzes context tokens (domicile/context_tokens.py): what a client hands back as a context.

Input layout: a mode byte, the lengths of a namespace and a key (one byte each), the namespace
and the key (UTF-8, undecodable bytes replaced), and the rest.

- Mode even: the rest is a token from a client. Opening it may only raise InvalidArgument; a
  token that opens (a seed issued under this harness's key) must round-trip.
- Mode odd: the rest is a context payload, signed as a holder of the cluster key would, so that
  the bytes reach the protobuf decoding and the context checks behind the MAC. Opening may only
  raise InvalidArgument; a context that opens must round-trip (issue, open: the same context),
  and its token must be refused for another key and when altered.

    python tests/fuzz/fuzz_context_tokens.py [-runs=N] [libFuzzer flags] corpus_dir...
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["domicile"]):
    from domicile.causality import CausalContext
    from domicile.context_tokens import MAC_BYTES, TOKEN_VERSION, ContextTokens, is_token
    from domicile.errors import InvalidArgument
    from domicile.model import Limits

# A fixed cluster key: the seeds' valid tokens are issued under it.
TOKENS = ContextTokens(bytes(range(32)))
LIMITS = Limits()


def split(data: bytes) -> tuple[int, str, str, bytes]:
    if len(data) < 3:
        return 0, "", "", data
    mode, ns_len, key_len = data[0], data[1], data[2]
    rest = data[3:]
    namespace = rest[:ns_len].decode("utf-8", "replace")
    key = rest[ns_len : ns_len + key_len].decode("utf-8", "replace")
    return mode, namespace, key, rest[ns_len + key_len :]


def opened(namespace: str, key: str, token: bytes) -> CausalContext | None:
    try:
        return TOKENS.open(namespace, key, token, LIMITS)
    except InvalidArgument:
        return None


def refused(namespace: str, key: str, token: bytes, why: str) -> None:
    if opened(namespace, key, token) is not None:
        raise AssertionError(f"a token {why} was accepted: {token!r}")


def round_trip(namespace: str, key: str, context: CausalContext) -> None:
    token = TOKENS.issue(namespace, key, context)
    if not is_token(token):
        raise AssertionError(f"an issued token is not recognised as one: {token!r}")
    again = opened(namespace, key, token)
    if again != context:
        raise AssertionError(f"context does not survive issue and open:\n  {context!r}\n  {again!r}")
    refused(namespace, key + "x", token, "for another key")
    refused(namespace + "x", key, token, "for another namespace")
    altered = bytearray(token)
    altered[1 + MAC_BYTES // 2] ^= 0x01
    refused(namespace, key, bytes(altered), "with an altered MAC")
    if len(token) > 1 + MAC_BYTES:
        altered = bytearray(token)
        altered[-1] ^= 0x01
        refused(namespace, key, bytes(altered), "with an altered payload")


def signed(namespace: str, key: str, payload: bytes) -> bytes:
    """`payload` in a token with a valid MAC. Private on purpose: a fuzzer cannot forge the MAC,
    and the checks behind it are the target."""
    return bytes([TOKEN_VERSION]) + TOKENS._mac(namespace, key, payload) + payload


def test_one_input(data: bytes) -> None:
    mode, namespace, key, rest = split(data)
    token = rest if mode % 2 == 0 else signed(namespace, key, rest)
    context = opened(namespace, key, token)
    if context is not None:
        round_trip(namespace, key, context)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
