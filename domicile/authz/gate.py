"""Who is calling, and may they: the check every RPC of a node and of the coordinator starts with.

The caller is the verified peer certificate of the mutual-TLS connection or, when the call
carries `authorization: Bearer <jwt>`, the token's subject (checked against the JWKS). Nothing
the client merely declares names the caller; the declared purpose (`domicile-purpose`) is only
the context of the decision. A refusal is PermissionDenied (authenticated, not allowed) or
Unauthenticated (no identity), and `on_refusal` lets the daemon count and audit it.

On a port started with --insecure there is no identity to check: every call is let through and
the audit trail records the peer address, marked as unauthenticated.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from domicile.authz.authorizer import Authorizer
from domicile.authz.model import NamespaceResource, RequestContext, Resource, Role
from domicile.authz.model import Principal as AuthzPrincipal
from domicile.errors import DomicileError, InvalidArgument, PermissionDenied, Unauthenticated
from domicile.identity.certificate import load_certificate, principal_from_certificate
from domicile.identity.peer import auth_context
from domicile.identity.principal import ExpectedPeer, Principal, PrincipalKind
from domicile.identity.revocation import serial_text
from domicile.identity.tokens import TokenVerifier, bearer_token
from domicile.model import check_purpose

PURPOSE_METADATA = "domicile-purpose"
DECISION_CACHE_SIZE = 4096
PRINCIPAL_CACHE_SIZE = 1024


class Reason(enum.StrEnum):
    """The `reason` label of the refusal counter."""

    UNAUTHENTICATED = "unauthenticated"
    # A certificate the cluster's revocation list revokes: its holder (a stolen key?) still calls.
    REVOKED = "revoked"
    POLICY = "policy"  # the Cedar policies refuse (roles, ownership, purpose)
    WRONG_PEER = "wrong_peer"  # authenticated, but not the identity this call needs
    # A context token that does not verify for the record (forged, altered, another record's or
    # another cluster key's): an attempt to use a context the cluster never gave the caller.
    CONTEXT_TOKEN = "context_token"
    TOO_LARGE = "too_large"  # a request over its service's message bound, refused before decoding


@dataclass(frozen=True)
class Caller:
    """The verified caller of one call. `identity` is what the audit trail records."""

    identity: str
    principal: Principal | None
    purpose: str = ""
    # For a bearer token: the certificate identity it came over ("" otherwise). `identity` then
    # names both: "<token subject> via <certificate>".
    carrier: str = ""


class _Revoked(Unauthenticated):
    """A certificate the cluster's revocation list revokes (counted apart)."""


@dataclass(frozen=True)
class Refusal:
    action: str
    reason: Reason
    identity: str  # the verified identity, or the peer address when there is none
    message: str
    namespace: str = ""


def _metadata(context: Any) -> Sequence[tuple[str, str | bytes]]:
    return [(item.key, item.value) for item in context.invocation_metadata() or ()]


def declared_purpose(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    for key, value in metadata:
        if key == PURPOSE_METADATA:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            check_purpose(text)
            return text
    return ""


def authz_principal(principal: Principal) -> AuthzPrincipal:
    """The Cedar principal of a verified identity: a node holds the `node` role by its kind."""
    if principal.kind is PrincipalKind.NODE:
        roles = frozenset({Role.NODE})
    else:
        roles = frozenset(Role(r.value) for r in principal.roles)
    name = principal.name or principal.node_id or ""
    return AuthzPrincipal(principal.uri, principal.kind, roles, name)


@dataclass(frozen=True)
class Validity:
    """A certificate's validity period, in seconds since the epoch."""

    not_before_s: float
    not_after_s: float


def check_validity(identity: str, valid: Validity, now_s: float | None = None) -> None:
    """Unauthenticated unless the certificate is valid now."""
    now = time.time() if now_s is None else now_s
    if now > valid.not_after_s:
        when = datetime.fromtimestamp(valid.not_after_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise Unauthenticated(
            f"the certificate of {identity} expired at {when}; connect again with a current one"
        )
    if now < valid.not_before_s:
        raise Unauthenticated(f"the certificate of {identity} is not valid yet")


class Gate:
    """`cluster` None: an insecure port, where nothing is checked (the daemon logged that)."""

    def __init__(
        self,
        *,
        cluster: str | None,
        authorizer: Authorizer | None = None,
        tokens: TokenVerifier | None = None,
        on_refusal: Callable[[Refusal], None] = lambda refusal: None,
        revoked: Callable[[], frozenset[int]] = frozenset,
    ) -> None:
        if cluster is not None and authorizer is None:
            raise InvalidArgument("an authenticated port needs an authorizer")
        self.cluster = cluster
        self.authorizer = authorizer
        self.tokens = tokens
        self.on_refusal = on_refusal
        # The serial numbers the cluster's revocation list revokes now (ServerSecurity.revoked).
        self.revoked = revoked
        # Between two policy sets (replace_authorizer) a decision for the same principal, action,
        # resource and purpose is the same every time: one Cedar evaluation each.
        self._decide = functools.lru_cache(maxsize=DECISION_CACHE_SIZE)(self._decision)
        # Allowed decisions by the identity of their principal and resource objects (authorize).
        self._allowed: dict[tuple[int, str, int, str], tuple[Principal, Resource]] = {}
        # Parsing the peer's certificate costs more than the cached decision (about 30 us against
        # 10): a connection presents the same bytes on every call, so each is parsed once. The
        # handshake verified them; a refusal (Unauthenticated) is not cached.
        self._certificate_principal = functools.lru_cache(maxsize=PRINCIPAL_CACHE_SIZE)(
            self._principal_of_certificate
        )

    @property
    def enforcing(self) -> bool:
        return self.cluster is not None

    @property
    def policy_version(self) -> str:
        """The version of the authorization policies in force; "" on an insecure port."""
        return self.authorizer.version if self.authorizer is not None else ""

    def replace_authorizer(self, authorizer: Authorizer) -> None:
        """Enforce another policy set from the next call on. The decision caches go with the old
        set (new caches, not cleared ones, so a decision in flight cannot refill them)."""
        if self.cluster is None:
            raise InvalidArgument("an insecure port enforces no policies")
        decide = functools.lru_cache(maxsize=DECISION_CACHE_SIZE)(functools.partial(_decision, authorizer))
        self.authorizer, self._decide, self._allowed = authorizer, decide, {}

    def authenticate(self, context: Any, action: str) -> Caller:
        """The caller, without deciding anything; Unauthenticated (counted) when there is none."""
        metadata = _metadata(context)
        if self.cluster is None:
            return Caller(f"unauthenticated:{context.peer()}", None, _purpose(metadata))
        try:
            token = bearer_token(metadata)
            pem = self._peer_certificate(context)
            carrier, serial, valid = self._certificate_principal(pem)
            revoked = self.revoked()
            if revoked and serial in revoked:
                # Before its validity: a revoked certificate still in use is the alert's business,
                # expired or not.
                raise _Revoked(
                    f"the certificate of {carrier.uri} (serial {serial_text(serial)}) is revoked by the "
                    "cluster's revocation list; ask for a new one"
                )
            check_validity(carrier.uri, valid)
            principal = None
            if token is not None:
                if self.tokens is None:
                    raise Unauthenticated(
                        "this service accepts no bearer tokens (it has no --jwks); "
                        "authenticate with the client certificate alone"
                    )
                principal = self.tokens.verify(token, _der(pem))
        except Unauthenticated as error:
            reason = Reason.REVOKED if isinstance(error, _Revoked) else Reason.UNAUTHENTICATED
            self.on_refusal(Refusal(action, reason, self.identity_of(context), error.message))
            raise
        # Only once the caller is known: a revoked or expired certificate is refused as such,
        # counted and audited, whatever else its request gets wrong.
        purpose = _purpose(metadata)
        if principal is None:
            return Caller(carrier.uri, carrier, purpose)
        # The token's subject is who acts; the certificate it came over is recorded beside it.
        return Caller(f"{principal.uri} via {carrier.uri}", principal, purpose, carrier=carrier.uri)

    def check(
        self,
        context: Any,
        action: str,
        resource: Resource,
        expected: ExpectedPeer | None = None,
        namespace: str = "",
    ) -> Caller:
        """Authenticate, insist on `expected` when given, then ask the policies; the caller if
        allowed, PermissionDenied naming the action and what would allow it otherwise."""
        return self.authorize(self.authenticate(context, action), action, resource, expected, namespace)

    def authorize(
        self,
        caller: Caller,
        action: str,
        resource: Resource,
        expected: ExpectedPeer | None = None,
        namespace: str = "",
    ) -> Caller:
        """check, for a caller already authenticated."""
        principal = caller.principal
        if principal is None:
            return caller
        if expected is not None and not expected.matches(principal):
            message = f"{action} may be called only by {expected.describe()}, not by {caller.identity}"
            self.on_refusal(Refusal(action, Reason.WRONG_PEER, caller.identity, message, namespace))
            raise PermissionDenied(message)
        # The same principal and resource objects come back call after call (the certificate's
        # principal and the served namespace are each built once): an allowed decision is kept
        # by their identity, which costs less than hashing their fields. Each entry holds both
        # objects, so an id cannot be reused while its entry lives.
        allowed, decide = self._allowed, self._decide
        key = (id(principal), action, id(resource), caller.purpose)
        known = allowed.get(key)
        if known is not None and known[0] is principal and known[1] is resource:
            return caller
        try:
            decide(authz_principal(principal), action, resource, caller.purpose)
        except PermissionDenied as error:
            self.on_refusal(Refusal(action, Reason.POLICY, caller.identity, error.message, namespace))
            raise
        if len(allowed) >= DECISION_CACHE_SIZE:
            allowed.clear()
        allowed[key] = (principal, resource)
        return caller

    def identity_of(self, context: Any) -> str:
        """Who a refused call came from, as far as anything verified says: the connection's
        certificate when it names a principal (a bad token over a good certificate, say), the
        peer address when nothing does."""
        if self.cluster is None:
            return f"unauthenticated:{context.peer()}"
        try:
            return self._certificate_principal(self._peer_certificate(context))[0].uri
        except Unauthenticated:
            return str(context.peer())

    def allows_with_some_purpose(self, caller: Caller, action: str, resource: NamespaceResource) -> bool:
        """Whether the caller would be allowed `action` on `resource` for one of its purposes:
        then a purpose refusal may tell it the namespace's purposes."""
        if caller.principal is None:
            return True
        principal = authz_principal(caller.principal)
        for purpose in resource.purposes:
            try:
                self._decide(principal, action, resource, purpose)
            except PermissionDenied:
                continue
            return True
        return False

    def certificate_serial(self, context: Any) -> tuple[int, str, Validity]:
        """The serial number, identity and validity of the connection's verified client
        certificate (Unauthenticated when there is none)."""
        principal, serial, valid = self._certificate_principal(self._peer_certificate(context))
        return serial, principal.uri, valid

    def _peer_certificate(self, context: Any) -> bytes:
        """The PEM of the verified client certificate of the connection."""
        auth = auth_context(context)
        if auth.get("transport_security_type") != [b"ssl"]:
            raise Unauthenticated("the connection is not TLS, so the peer is not authenticated")
        certificates = auth.get("x509_pem_cert")
        if not certificates:
            raise Unauthenticated("the peer presented no client certificate")
        return certificates[0]

    def _principal_of_certificate(self, pem: bytes) -> tuple[Principal, int, Validity]:
        """The principal a certificate names, its serial number (checked against the revocation
        list at every call: the list may change while the certificate is cached) and its
        validity (checked at every call too: the handshake checked it once, and a connection
        outlives the certificate it was opened with)."""
        assert self.cluster is not None
        certificate = load_certificate(pem)
        valid = Validity(
            certificate.not_valid_before_utc.timestamp(), certificate.not_valid_after_utc.timestamp()
        )
        return principal_from_certificate(certificate, self.cluster), certificate.serial_number, valid

    def _decision(self, principal: AuthzPrincipal, action: str, resource: Resource, purpose: str) -> None:
        assert self.authorizer is not None
        _decision(self.authorizer, principal, action, resource, purpose)


def _decision(
    authorizer: Authorizer, principal: AuthzPrincipal, action: str, resource: Resource, purpose: str
) -> None:
    # A refusal is not cached (lru_cache keeps no exceptions): refusals are rare and each one
    # is worth its full explanation.
    authorizer.require(principal, action, resource, RequestContext(purpose))


def _purpose(metadata: Sequence[tuple[str, str | bytes]]) -> str:
    try:
        return declared_purpose(metadata)
    except InvalidArgument as error:
        raise InvalidArgument(f"{PURPOSE_METADATA} metadata: {error.message}") from None


@functools.lru_cache(maxsize=PRINCIPAL_CACHE_SIZE)
def _der(pem: bytes) -> bytes:
    return load_certificate(pem).public_bytes(Encoding.DER)


def refuse_wrong_peer(gate: Gate, action: str, caller: Caller, message: str) -> DomicileError:
    """A PermissionDenied for a caller that is authenticated but not the one the call needs
    (counted like every refusal). Returned for the caller to raise."""
    gate.on_refusal(Refusal(action, Reason.WRONG_PEER, caller.identity, message))
    return PermissionDenied(message)


def load_checks(
    cluster: str | None, policies: str | Path | None, jwks: str | Path | None, issuer: str, audience: str
) -> tuple[Authorizer | None, TokenVerifier | None]:
    """A daemon's policies and token verifier, loaded at start so that a bad file stops it there
    (InvalidArgument naming the file). Nothing is loaded for an insecure port."""
    if cluster is None:
        return None, None
    if policies:
        authorizer = Authorizer.from_files(policies, cluster_name=cluster)
    else:
        authorizer = Authorizer.default(cluster)
    tokens = None
    if jwks:
        tokens = TokenVerifier(Path(jwks), issuer=issuer, audience=audience, cluster=cluster)
        # Read now: a missing or malformed key set is a start-up error, not a refusal per call.
        tokens.jwks.key("")
    return authorizer, tokens
