"""The public keys bearer tokens are checked against: a JWKS file, read again when it changes.

Each key is bound to exactly one algorithm by its type (OKP Ed25519: EdDSA, EC P-256: ES256,
RSA of 2048 bits or more: RS256). A token must name that algorithm, which is what closes the
door on key confusion (an RSA public key used as an HMAC secret, say). The file may hold public
keys only; a secret or private key in it means it was made wrongly, and it is refused whole.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from domicile.errors import InvalidArgument

log = logging.getLogger("domicile.identity")
ALGORITHMS = ("EdDSA", "ES256", "RS256")
RSA_BITS_MIN = 2048
JWKS_BYTES_MAX = 1 << 20


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    algorithm: str
    key: Any


def _algorithm_of(jwk: dict[str, Any]) -> str | None:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        return "EdDSA"
    if kty == "EC" and crv == "P-256":
        return "ES256"
    if kty == "RSA":
        return "RS256"
    return None


def parse_jwks(data: bytes, source: str) -> dict[str, VerificationKey]:
    """The usable keys of a JWKS document by kid. Keys of other types are left out with a warning."""
    if len(data) > JWKS_BYTES_MAX:
        raise InvalidArgument(f"key set {source} is larger than {JWKS_BYTES_MAX} bytes")
    try:
        document = json.loads(data)
    except ValueError:
        raise InvalidArgument(f"key set {source} is not JSON") from None
    jwks = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(jwks, list):
        raise InvalidArgument(f'key set {source} has no "keys" list')
    keys: dict[str, VerificationKey] = {}
    for index, jwk in enumerate(jwks):
        where = f"key set {source}, key {index}"
        if not isinstance(jwk, dict):
            raise InvalidArgument(f"{where} is not an object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidArgument(f'{where} has no "kid"; every key needs one')
        where = f"key set {source}, key {kid!r}"
        if jwk.get("kty") == "oct" or "d" in jwk:
            raise InvalidArgument(
                f"{where} is a secret or private key; the key set may hold public keys only"
            )
        if kid in keys:
            raise InvalidArgument(f"{where} appears twice")
        algorithm = _algorithm_of(jwk)
        if algorithm is None:
            log.warning("%s is left out: only Ed25519, P-256 and RSA keys are used", where)
            continue
        if jwk.get("alg", algorithm) != algorithm:
            log.warning(
                "%s is left out: a %s key may only sign %s, not %s", where, jwk["kty"], algorithm, jwk["alg"]
            )
            continue
        if jwk.get("use", "sig") != "sig":
            log.warning("%s is left out: its use is %r, not sig", where, jwk["use"])
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as error:
            raise InvalidArgument(f"{where} cannot be read: {error}") from None
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_BITS_MIN:
            raise InvalidArgument(f"{where} has {key.key_size} bits; RSA keys need at least {RSA_BITS_MIN}")
        keys[kid] = VerificationKey(kid, algorithm, key)
    return keys


class JwksFile:
    """A JWKS file. A change is picked up by the next lookup; a changed file that cannot be read
    fails every lookup until it is fixed, so a botched key removal cannot keep a key alive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._keys: dict[str, VerificationKey] = {}
        self._fault: InvalidArgument | None = None
        self._refresh()
        if self._fault is not None:
            raise self._fault

    def _fingerprint(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        seen = self._fingerprint()
        if seen == self._seen and self._seen is not None:
            return
        with self._lock:
            if seen == self._seen and self._seen is not None:
                return
            self._seen = seen
            try:
                self._keys = parse_jwks(self.path.read_bytes(), str(self.path))
                self._fault = None
            except OSError as error:
                self._keys, self._fault = (
                    {},
                    InvalidArgument(f"key set {self.path} cannot be read: {error.strerror}"),
                )
            except InvalidArgument as error:
                self._keys, self._fault = {}, error
            if self._fault is not None:
                log.error("no bearer token is accepted until the key set is fixed: %s", self._fault.message)

    def key(self, kid: str) -> VerificationKey | None:
        """The key named `kid`; None when the set has no such key. InvalidArgument when the file is broken."""
        self._refresh()
        if self._fault is not None:
            raise self._fault
        return self._keys.get(kid)
