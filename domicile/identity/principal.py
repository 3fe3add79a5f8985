"""Who is calling: the authenticated peer of a connection or the subject of a bearer token."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from domicile.errors import InvalidArgument, PermissionDenied


class PrincipalKind(enum.StrEnum):
    NODE = "node"
    COORDINATOR = "coordinator"
    CLIENT = "client"


class Role(enum.StrEnum):
    """What a client may do. Only clients carry roles; nodes and the coordinator are trusted as such."""

    APP = "app"
    DPO = "dpo"
    AUDITOR = "auditor"
    OPERATOR = "operator"
    # Reads /metrics and health, and may call no RPC: what a Prometheus server is given.
    MONITOR = "monitor"


ROLE_NAMES = tuple(r.value for r in Role)
# The client roles that watch or run the cluster: besides its own nodes and coordinator, only
# they may call health and reflection (domicile.authz.operational) and read /metrics
# (domicile.metrics_endpoint), which tell what runs where and what it serves.
WATCHING_ROLES = frozenset({Role.MONITOR, Role.OPERATOR, Role.AUDITOR})


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    roles = set()
    for name in names:
        try:
            roles.add(Role(name))
        except ValueError:
            raise InvalidArgument(f"unknown role {name!r}; allowed: {', '.join(ROLE_NAMES)}") from None
    return frozenset(roles)


class AuthMethod(enum.StrEnum):
    CERTIFICATE = "certificate"
    TOKEN = "token"


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    cluster: str
    # The SPIFFE ID: the identity to print, log and audit.
    uri: str
    region: str | None = None
    node_id: str | None = None
    name: str | None = None
    roles: frozenset[Role] = field(default_factory=frozenset)
    authenticated_by: AuthMethod = AuthMethod.CERTIFICATE
    # A node certificate's audit-head key (raw Ed25519, see audit_key.py); None when it binds none.
    audit_key: bytes | None = None

    def __str__(self) -> str:
        return self.uri

    def has_role(self, role: Role) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class ExpectedPeer:
    """What a peer must be for a connection or call to go on, e.g. "node X of region R".

    Fields left as None match anything: `ExpectedPeer(PrincipalKind.NODE)` is any node of the cluster.
    """

    kind: PrincipalKind
    region: str | None = None
    node_id: str | None = None
    name: str | None = None
    roles: frozenset[Role] = field(default_factory=frozenset)

    @classmethod
    def node(cls, region: str | None = None, node_id: str | None = None) -> ExpectedPeer:
        return cls(PrincipalKind.NODE, region=region, node_id=node_id)

    @classmethod
    def coordinator(cls) -> ExpectedPeer:
        return cls(PrincipalKind.COORDINATOR)

    @classmethod
    def client(cls, name: str | None = None, roles: Iterable[Role] = ()) -> ExpectedPeer:
        return cls(PrincipalKind.CLIENT, name=name, roles=frozenset(roles))

    def describe(self) -> str:
        if self.kind is PrincipalKind.NODE:
            node = f"node {self.node_id}" if self.node_id else "a node"
            return f"{node} of region {self.region}" if self.region else node
        if self.kind is PrincipalKind.COORDINATOR:
            return "the coordinator"
        text = f"client {self.name}" if self.name else "a client"
        if self.roles:
            text += f" with role {', '.join(sorted(self.roles))}"
        return text

    def matches(self, principal: Principal) -> bool:
        return (
            principal.kind is self.kind
            and self.region in (None, principal.region)
            and self.node_id in (None, principal.node_id)
            and self.name in (None, principal.name)
            and self.roles <= principal.roles
        )

    def check(self, principal: Principal) -> Principal:
        """The principal, if it is what is expected; PermissionDenied naming both otherwise."""
        if not self.matches(principal):
            raise PermissionDenied(f"peer {principal.uri} is not {self.describe()}")
        return principal
