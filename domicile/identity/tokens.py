"""Bearer tokens (JWT) for clients that cannot hold a certificate.

A token is accepted when it is signed with EdDSA, ES256 or RS256 by a key of the JWKS file under
the kid its header names, and its issuer, audience, expiry and not-before hold (with a small
leeway for clock skew). It names a client: `sub` is the client name and the optional `roles`
claim a list of roles. Every refusal is Unauthenticated with a message that says what was
wrong and never repeats the token.

A token may be bound to the client certificate it is sent over (RFC 8705 certificate-bound
access tokens): a `cnf` claim with `x5t#S256`, the base64url SHA-256 thumbprint of the
certificate's DER. Such a token is accepted only over that certificate, so a stolen token is
useless without the key of the certificate it was issued for. A `cnf` with no `x5t#S256` (a
confirmation method this service cannot check) is refused.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt

from domicile.errors import InvalidArgument, Unauthenticated
from domicile.identity import spiffe
from domicile.identity.jwks import ALGORITHMS, JwksFile
from domicile.identity.principal import AuthMethod, Principal, PrincipalKind, parse_roles

DEFAULT_LEEWAY = dt.timedelta(seconds=30)
LEEWAY_MAX = dt.timedelta(minutes=5)
TOKEN_CHARS_MAX = 16 * 1024
REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub")
CNF_X5T = "x5t#S256"


def _shown(value: object) -> str:
    """A header value as it may appear in a message: short, so no message can carry a token."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class TokenVerifier:
    def __init__(
        self,
        jwks_path: Path,
        *,
        issuer: str,
        audience: str,
        cluster: str,
        leeway: dt.timedelta = DEFAULT_LEEWAY,
    ) -> None:
        if not issuer or not audience:
            raise InvalidArgument("a token verifier needs an issuer and an audience")
        if not dt.timedelta(0) <= leeway <= LEEWAY_MAX:
            raise InvalidArgument(f"token leeway must be 0 to {LEEWAY_MAX.total_seconds():.0f} seconds")
        self.issuer = issuer
        self.audience = audience
        self.cluster = spiffe.check_cluster(cluster)
        self.leeway = leeway
        self.jwks = JwksFile(jwks_path)

    def verify(self, token: str, certificate_der: bytes | None = None) -> Principal:
        """The client the token names; Unauthenticated saying why it is refused.
        `certificate_der`: the client certificate the token came over (for `cnf`)."""
        claims = self._claims(token)
        _check_confirmation(claims, certificate_der)
        subject = claims["sub"]
        if not isinstance(subject, str) or not spiffe.CLIENT_NAME_RE.match(subject):
            raise Unauthenticated("token subject is not a client name (1 to 128 of A-Z a-z 0-9 '.' '_' '-')")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated('token claim "roles" must be a list of role names')
        try:
            parsed = parse_roles(roles)
        except InvalidArgument as error:
            raise Unauthenticated(f"token {error.message}") from None
        return Principal(
            PrincipalKind.CLIENT,
            self.cluster,
            spiffe.client_uri(self.cluster, subject),
            name=subject,
            roles=parsed,
            authenticated_by=AuthMethod.TOKEN,
        )

    def _claims(self, token: str) -> dict[str, Any]:
        if not isinstance(token, str) or not token or len(token) > TOKEN_CHARS_MAX:
            raise Unauthenticated(f"malformed token: expected a JWT of at most {TOKEN_CHARS_MAX} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token: not a signed JWT (header.payload.signature)") from None
        algorithm = header.get("alg")
        if algorithm is None or str(algorithm).lower() == "none":
            raise Unauthenticated("unsigned token (alg none) refused")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated(
                f"token algorithm {_shown(algorithm)} refused; accepted: {', '.join(ALGORITHMS)}"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated('token header has no "kid", so no key to check it with')
        try:
            key = self.jwks.key(kid)
        except InvalidArgument as error:
            raise Unauthenticated(f"tokens cannot be checked now: {error.message}") from None
        if key is None:
            raise Unauthenticated(f"token key id {_shown(kid)} is not in the key set")
        if key.algorithm != algorithm:
            raise Unauthenticated(
                f"token says {algorithm} but key {_shown(kid)} verifies {key.algorithm} only"
            )
        try:
            return dict(
                jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": list(REQUIRED_CLAIMS)},
                )
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not valid yet (nbf or iat in the future)") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthenticated(f'token lacks the "{error.claim}" claim') from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"token is for another audience; this service is {self.audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"token is from another issuer; accepted: {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(f"token signature does not verify with key {_shown(kid)}") from None
        except jwt.DecodeError:
            raise Unauthenticated("malformed token: its payload or signature cannot be decoded") from None
        except jwt.PyJWTError as error:
            raise Unauthenticated(f"token refused: {type(error).__name__}") from None


def thumbprint(certificate_der: bytes) -> str:
    """RFC 8705's x5t#S256: base64url (no padding) of the SHA-256 of the certificate's DER."""
    return base64.urlsafe_b64encode(hashlib.sha256(certificate_der).digest()).rstrip(b"=").decode("ascii")


def _check_confirmation(claims: dict[str, Any], certificate_der: bytes | None) -> None:
    if "cnf" not in claims:
        return
    confirmation = claims["cnf"]
    if not isinstance(confirmation, dict) or not isinstance(confirmation.get(CNF_X5T), str):
        raise Unauthenticated(
            f'token claim "cnf" must carry "{CNF_X5T}" (the thumbprint of the client certificate it '
            "is bound to); no other confirmation method is accepted"
        )
    if certificate_der is None:
        raise Unauthenticated("token is bound to a client certificate (cnf), but none was presented")
    if not hmac.compare_digest(confirmation[CNF_X5T], thumbprint(certificate_der)):
        raise Unauthenticated(
            "token is bound to another client certificate (cnf x5t#S256 does not match the "
            "certificate it came over); send it over the certificate it was issued for"
        )


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, or None without one."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        return token.strip()
    return None
