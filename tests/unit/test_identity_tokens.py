"""Bearer tokens: good ones of each accepted algorithm, and each kind of bad one refused with a
message that says why and does not repeat the token."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from domicile.errors import InvalidArgument, Unauthenticated
from domicile.identity.principal import AuthMethod, PrincipalKind, Role
from domicile.identity.tokens import TokenVerifier, bearer_token

ISSUER = "https://id.example/"
AUDIENCE = "domicile:prod"


def new_keys():
    return {
        "EdDSA": ("ed-1", ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
        "ES256": ("ec-1", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
        "RS256": ("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
    }


KEYS = new_keys()


def jwk(kid, private, algorithm_class, **extra):
    document = json.loads(algorithm_class.to_jwk(private.public_key()))
    return {**document, "kid": kid, **extra}


def write_jwks(path, *jwks):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": list(jwks)}))
    os.replace(tmp, path)


@pytest.fixture
def jwks_path(tmp_path):
    path = tmp_path / "jwks.json"
    write_jwks(path, *(jwk(kid, key, cls) for kid, key, cls in KEYS.values()))
    return path


@pytest.fixture
def verifier(jwks_path):
    return TokenVerifier(jwks_path, issuer=ISSUER, audience=AUDIENCE, cluster="prod")


def claims(**changes):
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, "roles": ["dpo"]}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def sign(algorithm="ES256", kid=None, **changes):
    default_kid, key, _ = KEYS[algorithm]
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers={"kid": kid or default_kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(verifier, token, says):
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    assert says in caught.value.message
    assert token not in caught.value.message
    for part in token.split("."):
        assert len(part) < 8 or part not in caught.value.message
    return caught.value


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256"])
def test_good_tokens_of_each_algorithm_name_a_client(verifier, algorithm):
    principal = verifier.verify(sign(algorithm))
    assert (principal.kind, principal.name, principal.roles) == (PrincipalKind.CLIENT, "alice", {Role.DPO})
    assert principal.uri == "spiffe://prod/client/alice"
    assert principal.authenticated_by is AuthMethod.TOKEN


def test_roles_are_optional_and_audience_may_be_a_list(verifier):
    assert verifier.verify(sign(roles=None, aud=["other", AUDIENCE])).roles == frozenset()


def test_unsigned_token_is_refused(verifier):
    header = b64(json.dumps({"alg": "none", "kid": "ec-1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    refused(verifier, f"{header}.{payload}.", "unsigned token (alg none) refused")
    header = b64(json.dumps({"alg": "None", "kid": "ec-1"}).encode())
    refused(verifier, f"{header}.{payload}.", "unsigned token (alg none) refused")


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_bytes_is_refused(verifier, algorithm):
    # The classic key confusion: the verifier's public key, which anyone has, used as an HMAC secret.
    public = (
        KEYS["RS256"][1]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = b64(json.dumps({"alg": algorithm, "kid": "rsa-1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[algorithm]
    signature = b64(hmac.new(public, f"{header}.{payload}".encode(), digest).digest())
    refused(
        verifier, f"{header}.{payload}.{signature}", f"token algorithm '{algorithm}' refused; accepted: EdDSA"
    )


def test_a_token_naming_another_algorithm_than_its_key_is_refused(verifier):
    token = sign("ES256", kid="rsa-1")
    refused(verifier, token, "token says ES256 but key 'rsa-1' verifies RS256 only")


def test_expired_and_not_yet_valid_tokens_are_refused(verifier):
    now = int(time.time())
    refused(verifier, sign(exp=now - 60, iat=now - 600), "token expired")
    refused(verifier, sign(nbf=now + 600, exp=now + 900), "token not valid yet")


def test_the_leeway_forgives_small_clock_skew(jwks_path):
    now = int(time.time())
    lenient = TokenVerifier(
        jwks_path, issuer=ISSUER, audience=AUDIENCE, cluster="prod", leeway=dt.timedelta(seconds=60)
    )
    assert lenient.verify(sign(exp=now - 10, iat=now - 100)).name == "alice"
    strict = TokenVerifier(
        jwks_path, issuer=ISSUER, audience=AUDIENCE, cluster="prod", leeway=dt.timedelta(0)
    )
    refused(strict, sign(exp=now - 10, iat=now - 100), "token expired")
    with pytest.raises(InvalidArgument, match="leeway must be 0 to 300 seconds"):
        TokenVerifier(
            jwks_path, issuer=ISSUER, audience=AUDIENCE, cluster="prod", leeway=dt.timedelta(hours=1)
        )


def test_wrong_issuer_and_audience_are_refused(verifier):
    refused(
        verifier,
        sign(iss="https://evil.example/"),
        "token is from another issuer; accepted: 'https://id.example/'",
    )
    refused(
        verifier,
        sign(aud="domicile:staging"),
        "token is for another audience; this service is 'domicile:prod'",
    )


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
def test_a_missing_required_claim_is_named(verifier, claim):
    refused(verifier, sign(**{claim: None}), f'token lacks the "{claim}" claim')


def test_unknown_kid_and_missing_kid_are_refused(verifier):
    refused(verifier, sign("ES256", kid="ec-9"), "token key id 'ec-9' is not in the key set")
    token = jwt.encode(claims(), KEYS["ES256"][1], algorithm="ES256")
    refused(verifier, token, 'token header has no "kid"')


def test_a_tampered_token_is_refused(verifier):
    header, payload, signature = sign("EdDSA").split(".")
    forged = b64(json.dumps(claims(sub="mallory", roles=["operator"])).encode())
    refused(verifier, f"{header}.{forged}.{signature}", "token signature does not verify with key 'ed-1'")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BA")
    refused(verifier, f"{header}.{payload}.{flipped}", "token signature does not verify")


def test_a_token_signed_by_a_key_not_in_the_set_under_a_kid_that_is(verifier):
    other = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), other, algorithm="ES256", headers={"kid": "ec-1"})
    refused(verifier, token, "token signature does not verify with key 'ec-1'")


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.!!!.###", "x" * 20000],
    ids=["empty", "one-part", "garbage-parts", "bad-base64", "too-long"],
)
def test_malformed_tokens_are_refused(verifier, token):
    with pytest.raises(Unauthenticated, match="malformed token"):
        verifier.verify(token)


def test_bad_subject_and_roles_are_refused(verifier):
    refused(verifier, sign(sub="a/b"), "token subject is not a client name")
    refused(verifier, sign(roles="dpo"), 'token claim "roles" must be a list of role names')
    refused(verifier, sign(roles=["root"]), "token unknown role 'root'; allowed: app, dpo, auditor, operator")


def test_the_key_set_is_read_again_when_it_changes(jwks_path, verifier):
    kid, key, cls = KEYS["EdDSA"]
    write_jwks(jwks_path, jwk(*KEYS["ES256"]))
    refused(verifier, sign("EdDSA"), "token key id 'ed-1' is not in the key set")
    write_jwks(jwks_path, jwk(*KEYS["ES256"]), jwk(kid, key, cls))
    assert verifier.verify(sign("EdDSA")).name == "alice"
    jwks_path.write_text("{not json")
    refused(verifier, sign("EdDSA"), "tokens cannot be checked now: key set")


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ([{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}], "is a secret or private key"),
        ([{**jwk(*KEYS["ES256"]), "d": "AAAA"}], "is a secret or private key"),
        ([{k: v for k, v in jwk(*KEYS["ES256"]).items() if k != "kid"}], 'has no "kid"'),
        ([jwk(*KEYS["ES256"]), jwk(*KEYS["ES256"])], "appears twice"),
    ],
)
def test_a_key_set_that_is_made_wrongly_is_refused_at_start(tmp_path, keys, says):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    with pytest.raises(InvalidArgument, match=says):
        TokenVerifier(path, issuer=ISSUER, audience=AUDIENCE, cluster="prod")


def test_keys_of_other_types_or_declared_algorithms_are_left_out(tmp_path, caplog):
    path = tmp_path / "jwks.json"
    p384 = ec.generate_private_key(ec.SECP384R1())
    write_jwks(
        path,
        jwk("p384", p384, ECAlgorithm),
        jwk(*KEYS["RS256"][:2], RSAAlgorithm, alg="RS512") | {"kid": "rs512"},
    )
    verifier = TokenVerifier(path, issuer=ISSUER, audience=AUDIENCE, cluster="prod")
    assert "is left out" in caplog.text
    token = jwt.encode(claims(), KEYS["RS256"][1], algorithm="RS256", headers={"kid": "rs512"})
    refused(verifier, token, "token key id 'rs512' is not in the key set")


def test_small_rsa_keys_are_refused(tmp_path):
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk("small", small, RSAAlgorithm))
    with pytest.raises(InvalidArgument, match="RSA keys need at least 2048"):
        TokenVerifier(path, issuer=ISSUER, audience=AUDIENCE, cluster="prod")


def test_bearer_token_reads_the_authorization_metadata():
    assert bearer_token([("x", "y"), ("authorization", "Bearer abc.def.ghi")]) == "abc.def.ghi"
    assert bearer_token([("authorization", b"bearer  t ")]) == "t"
    assert bearer_token([]) is None
    with pytest.raises(Unauthenticated, match="must be 'Bearer <token>'"):
        bearer_token([("authorization", "Basic dXNlcjpwYXNz")])
