from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

import pytest

from domicile.causality import CausalContext, Dot
from domicile.context_tokens import ContextTokens, is_token
from domicile.errors import FailedPrecondition, InvalidArgument
from domicile.model import Limits
from domicile.v1 import record_pb2 as pb
from domicile.wire.records import context_to_pb
from node.keyfiles import load_context_key

CTX = CausalContext.of({"a": 3, "b": 1}, [Dot("c", 5)])


def test_a_token_opens_to_its_context_for_its_record_only() -> None:
    tokens = ContextTokens(secrets.token_bytes(32))
    token = tokens.issue("ns", "k", CTX)
    assert is_token(token)
    assert tokens.open("ns", "k", token, Limits()) == CTX
    # Length-prefixed: ("ns", "k") and ("n", "sk") sign differently.
    for namespace, key in (("ns", "k2"), ("ns2", "k"), ("n", "sk")):
        with pytest.raises(InvalidArgument, match="does not verify"):
            tokens.open(namespace, key, token, Limits())
    with pytest.raises(InvalidArgument, match="another cluster key"):
        ContextTokens(secrets.token_bytes(32)).open("ns", "k", token, Limits())


def test_a_token_is_the_documented_layout_whichever_way_it_is_issued() -> None:
    # The layout of the module docstring, computed here from its parts: a token issued from an
    # context already in its protobuf form (an answer) is the same token, and opens the same way.
    key = secrets.token_bytes(32)
    tokens = ContextTokens(key)
    payload = context_to_pb(CTX).SerializeToString(deterministic=True)
    message = b"domicile-context-token\x00" + b"\x00\x00\x00\x02ns" + b"\x00\x00\x00\x01k" + payload
    expected = b"\x01" + hmac.new(key, message, hashlib.sha256).digest() + payload
    assert tokens.issue("ns", "k", CTX) == expected
    assert tokens.issue_pb("ns", "k", context_to_pb(CTX)) == expected
    assert tokens.open("ns", "k", expected, Limits()) == CTX
    # Negative control: the same check on a token of another key fails.
    assert ContextTokens(secrets.token_bytes(32)).issue("ns", "k", CTX) != expected


def test_malformed_oversized_and_wrong_keys_are_refused() -> None:
    tokens = ContextTokens(secrets.token_bytes(32))
    for bad in (b"", b"\x01", b"\x02" + bytes(40)):
        with pytest.raises(InvalidArgument, match="malformed context token"):
            tokens.open("ns", "k", bad, Limits())
    with pytest.raises(InvalidArgument, match="at most 65536"):
        tokens.open("ns", "k", b"\x01" + bytes(70_000), Limits())
    with pytest.raises(InvalidArgument, match="32 bytes"):
        ContextTokens(b"short")


def test_a_signed_context_past_the_limits_is_still_refused() -> None:
    tokens = ContextTokens(secrets.token_bytes(32))
    big = CausalContext.of({f"n{i}": 1 for i in range(300)})
    with pytest.raises(InvalidArgument, match="at most 256 allowed"):
        tokens.open("ns", "k", tokens.issue("ns", "k", big), Limits())


def test_plain_contexts_of_older_tools_are_not_tokens() -> None:
    assert not is_token(b"")
    assert not is_token(pb.CausalContext(version_vector={"a": 1}).SerializeToString())
    assert not is_token(pb.CausalContext(dots=[pb.Dot(node_id="a", counter=2)]).SerializeToString())


def test_the_context_key_is_made_once_private_or_read_from_the_configured_file(tmp_path: Path) -> None:
    key = load_context_key("", tmp_path)
    assert len(key) == 32 and load_context_key("", tmp_path) == key
    assert stat.S_IMODE((tmp_path / "context.key").stat().st_mode) == 0o600
    with pytest.raises(FailedPrecondition, match="does not exist"):
        load_context_key(str(tmp_path / "missing.key"), tmp_path)
    shared = tmp_path / "shared.key"
    shared.write_bytes(b"x" * 31)
    os.chmod(shared, 0o600)
    with pytest.raises(FailedPrecondition, match="exactly 32"):
        load_context_key(str(shared), tmp_path)
    os.chmod(shared, 0o644)
    with pytest.raises(FailedPrecondition, match="mode 0600"):
        load_context_key(str(shared), tmp_path)


def test_a_token_issued_from_the_protobuf_form_is_the_same_token() -> None:
    """An answer builds the context's protobuf form once, for its context field and its token:
    the token must be byte for byte the one issue() makes, whatever order the form was filled
    in (the payload is encoded deterministically)."""
    tokens = ContextTokens(secrets.token_bytes(32))
    many = CausalContext.of({f"node-{i}": i + 1 for i in range(20)}, [Dot("z", 9), Dot("y", 2)])
    for ctx in (CTX, many, CausalContext.empty()):
        form = pb.CausalContext()
        for node in sorted(ctx.vv, reverse=True):
            form.version_vector[node] = ctx.vv[node]
        for dot in sorted(ctx.dots):
            form.dots.add(node_id=dot.node_id, counter=dot.counter)
        token = tokens.issue_pb("ns", "k", form)
        assert token == tokens.issue("ns", "k", ctx)
        assert tokens.open("ns", "k", token, Limits()) == ctx


def test_each_token_is_signed_afresh_from_the_keyed_state() -> None:
    # The key is set up once and each MAC starts from a copy of it: a MAC computed before must
    # leave nothing behind in the next, in any order.
    key = secrets.token_bytes(32)
    tokens = ContextTokens(key)
    records = [("ns", f"k{i}", CausalContext.of({"a": i + 1}, [])) for i in range(3)]
    for namespace, record_key, ctx in records * 2:
        payload = context_to_pb(ctx).SerializeToString(deterministic=True)
        ns, k = namespace.encode(), record_key.encode()
        message = (
            b"domicile-context-token\x00"
            + len(ns).to_bytes(4, "big") + ns + len(k).to_bytes(4, "big") + k + payload
        )  # fmt: skip
        expected = b"\x01" + hmac.digest(key, message, "sha256") + payload
        assert tokens.issue(namespace, record_key, ctx) == expected
