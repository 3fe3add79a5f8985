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
from node.keyfiles import load_context_key, split_context_keys

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
    (key,) = load_context_key("", tmp_path)
    assert len(key) == 32 and load_context_key("", tmp_path) == (key,)
    assert stat.S_IMODE((tmp_path / "context.key").stat().st_mode) == 0o600
    # A new node's data directory, which the store has not made yet (the keys are read first).
    assert len(load_context_key("", tmp_path / "new" / "node")[0]) == 32
    with pytest.raises(FailedPrecondition, match="does not exist"):
        load_context_key(str(tmp_path / "missing.key"), tmp_path)
    shared = tmp_path / "shared.key"
    shared.write_bytes(b"x" * 31)
    os.chmod(shared, 0o600)
    with pytest.raises(FailedPrecondition, match="exactly 32 bytes each"):
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


def test_a_rotation_issues_under_the_first_key_and_accepts_under_every_key() -> None:
    old, new, stranger = (secrets.token_bytes(32) for _ in range(3))
    seen: list[int] = []
    before = ContextTokens(old)
    adding = ContextTokens(old, [new], seen.append)  # step 1: the new key accepted
    promoted = ContextTokens(new, [old], seen.append)  # step 2: the new key issues
    after = ContextTokens(new)  # step 3: the old key removed
    old_token = before.issue("ns", "k", CTX)
    # Tokens are issued under the first key only: the accepted ones never sign.
    assert adding.issue("ns", "k", CTX) == old_token
    new_token = promoted.issue("ns", "k", CTX)
    assert new_token == after.issue("ns", "k", CTX) != old_token
    # Every step opens the tokens of every earlier and later step, until the old key is removed.
    for tokens in (before, adding, promoted):
        assert tokens.open("ns", "k", old_token, Limits()) == CTX
    for tokens in (adding, promoted, after):
        assert tokens.open("ns", "k", new_token, Limits()) == CTX
    # Only a token verified under a later key is reported, with the key's place in the file.
    assert seen == [2, 2]
    for tokens, token in (
        (after, old_token),
        (before, new_token),
        (ContextTokens(stranger, [old]), new_token),
    ):
        with pytest.raises(InvalidArgument, match="made under another cluster key") as info:
            tokens.open("ns", "k", token, Limits())
        assert "pass the context_token of an earlier get, put or delete" in str(info.value)
    # A later key's token is still bound to its record.
    with pytest.raises(InvalidArgument, match="does not verify for ns/k2"):
        promoted.open("ns", "k2", old_token, Limits())
    assert seen == [2, 2]


def test_the_keys_of_one_set_are_bounded_sized_and_distinct() -> None:
    keys = [secrets.token_bytes(32) for _ in range(5)]
    fourth: list[int] = []
    tokens = ContextTokens(keys[0], keys[1:4], fourth.append)
    assert tokens.open("ns", "k", ContextTokens(keys[3]).issue("ns", "k", CTX), Limits()) == CTX
    assert fourth == [4]
    with pytest.raises(InvalidArgument, match="5 context keys; at most 4 are allowed"):
        ContextTokens(keys[0], keys[1:])
    with pytest.raises(InvalidArgument, match="32 bytes, not 31"):
        ContextTokens(keys[0], [keys[1][:31]])
    with pytest.raises(InvalidArgument, match="repeat a key"):
        ContextTokens(keys[0], [keys[1], keys[0]])


def test_a_context_key_file_holds_one_to_four_distinct_keys_one_after_the_other(tmp_path: Path) -> None:
    a, b, c, d, e = (secrets.token_bytes(32) for _ in range(5))
    # The single-key file of before is one key, as it was.
    assert split_context_keys("context.key", a) == (a,)
    assert split_context_keys("context.key", b + a) == (b, a)
    assert split_context_keys("context.key", a + b + c + d) == (a, b, c, d)
    allowed = "1 to 4 keys of exactly 32 bytes each, one after the other (32, 64, 96, 128 bytes)"
    for size, data in ((0, b""), (31, a[:31]), (33, a + b"x"), (63, (a + b)[:63]), (160, a + b + c + d + e)):
        with pytest.raises(FailedPrecondition) as info:
            split_context_keys("keys/context.key", data)
        assert f"context key file keys/context.key holds {size} bytes; it must hold {allowed}" in str(
            info.value
        )
    with pytest.raises(FailedPrecondition, match="holds key 1 again as key 3; each key must be different"):
        split_context_keys("context.key", a + b + a)
    # Read from a configured file, named by its configured path.
    shared = tmp_path / "shared.key"
    shared.write_bytes(b + a)
    os.chmod(shared, 0o600)
    assert load_context_key(str(shared), tmp_path) == (b, a)
    shared.write_bytes(b + a + b"\n")
    with pytest.raises(FailedPrecondition, match=f"context key file {shared} holds 65 bytes"):
        load_context_key(str(shared), tmp_path)
