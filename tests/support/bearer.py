"""Bearer tokens for the tests: one signing key in a JWKS file the daemons trust, the tokens a
real identity provider issues with it, and the ones an attacker makes (unsigned, signed with the
public key as an HMAC secret, under an unknown key id, with a signature that does not verify)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISSUER = "https://idp.example"
AUDIENCE = "domicile"
KID = "k1"
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())
# A key the daemons do not know: what an attacker signs with.
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def write_jwks(path: Path) -> Path:
    public = json.loads(ECAlgorithm.to_jwk(SIGNING_KEY.public_key()))
    path.write_text(json.dumps({"keys": [{**public, "kid": KID}]}))
    return path


def token_settings(jwks: Path) -> dict[str, Any]:
    """The settings of a node (and the coordinator) that accepts these tokens."""
    return {"jwks": str(jwks), "token_issuer": ISSUER, "token_audience": AUDIENCE}


def claims(subject: str, roles: list[str], **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + 300,
        "roles": roles,
    }
    body.update(changes)
    return body


def token(subject: str, roles: list[str], *, key: Any = SIGNING_KEY, kid: str = KID, **changes: Any) -> str:
    return jwt.encode(claims(subject, roles, **changes), key, algorithm="ES256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], body: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"


def unsigned_token(subject: str, roles: list[str]) -> str:
    """alg none: no signature at all."""
    return _segments({"alg": "none", "typ": "JWT", "kid": KID}, claims(subject, roles)) + "."


def hmac_with_public_key(subject: str, roles: list[str]) -> str:
    """HS256 keyed with the verification key's public PEM: the classic algorithm confusion, which
    a verifier that takes the algorithm from the token would accept. Built by hand, since PyJWT
    itself refuses to use an asymmetric key as an HMAC secret."""
    public_pem = SIGNING_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed = _segments({"alg": "HS256", "typ": "JWT", "kid": KID}, claims(subject, roles))
    mac = hmac.new(public_pem, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{_b64(mac)}"


def bearer(value: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {value}"),)
