"""Who calls (principals), what they call it on (resources) and what the call carries (context)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from domicile.cluster import ClusterSpec, NamespaceSpec
from domicile.errors import InvalidArgument

# One principal kind for authentication and authorization: what a certificate names is what
# the policies decide on.
from domicile.identity.principal import PrincipalKind as PrincipalKind
from domicile.model import check_purpose

DEFAULT_CLUSTER_NAME = "domicile"
IDENTITY_BYTES_MAX = 512


class Role(enum.Enum):
    APP = "app"
    DPO = "dpo"
    AUDITOR = "auditor"
    OPERATOR = "operator"
    # No policy grants it anything: Prometheus' role, for /metrics and health (not RPCs).
    MONITOR = "monitor"
    NODE = "node"

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.strip().lower())
        except ValueError:
            allowed = ", ".join(r.value for r in cls)
            raise InvalidArgument(f"unknown role {text!r}; roles: {allowed}") from None


def parse_kind(text: str) -> PrincipalKind:
    """A principal kind by name (node, coordinator, client), as the CLI and identities spell it."""
    try:
        return PrincipalKind(text.strip().lower())
    except ValueError:
        allowed = ", ".join(k.value for k in PrincipalKind)
        raise InvalidArgument(f"unknown principal kind {text!r}; kinds: {allowed}") from None


def name_of(identity: str) -> str:
    """The workload name in an identity: <name> of spiffe://<cluster>/<kind>/<name>, or the identity."""
    if identity.startswith("spiffe://"):
        return identity.rstrip("/").rpartition("/")[2]
    return identity


def kind_of(identity: str) -> PrincipalKind:
    """The kind a SPIFFE id names (spiffe://<cluster>/<kind>/<name>); a client otherwise."""
    if identity.startswith("spiffe://"):
        segments = identity[len("spiffe://") :].strip("/").split("/")
        if len(segments) >= 3:
            return parse_kind(segments[1])
    return PrincipalKind.CLIENT


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `name` defaults to the workload name in the identity."""

    identity: str
    kind: PrincipalKind
    roles: frozenset[Role]
    name: str = ""

    def __post_init__(self) -> None:
        if not self.identity or len(self.identity.encode("utf-8", "surrogatepass")) > IDENTITY_BYTES_MAX:
            raise InvalidArgument(f"a principal identity is 1 to {IDENTITY_BYTES_MAX} bytes")
        if not self.name:
            object.__setattr__(self, "name", name_of(self.identity))

    @classmethod
    def of(cls, identity: str, roles: Iterable[str], kind: str = "") -> Principal:
        """From text (a CLI, a token's claims): unknown roles and kinds are InvalidArgument."""
        principal_kind = parse_kind(kind) if kind else kind_of(identity)
        return cls(identity, principal_kind, frozenset(Role.parse(r) for r in roles))

    def role_names(self) -> list[str]:
        return sorted(r.value for r in self.roles)


@dataclass(frozen=True)
class NamespaceResource:
    """A namespace as served at one region: the resource of the record RPCs."""

    name: str
    region: str
    classification: str
    owner: str = ""
    purposes: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: NamespaceSpec, region: str) -> NamespaceResource:
        return cls(spec.name, region, spec.classification.label, spec.owner, spec.purposes)

    @classmethod
    def in_cluster(cls, cluster: ClusterSpec, namespace: str, region: str) -> NamespaceResource:
        """Unknown namespaces are NotFound and unknown regions InvalidArgument, naming the known ones."""
        spec = cluster.namespace(namespace)
        if cluster.regions and cluster.region(region) is None:
            known = ", ".join(cluster.region_names())
            raise InvalidArgument(f"unknown region {region!r}; regions: {known}")
        return cls.of(spec, region)


@dataclass(frozen=True)
class RegionResource:
    """A region's node: the resource of the RPCs a node serves that name no namespace."""

    name: str


@dataclass(frozen=True)
class ClusterResource:
    """The cluster: the resource of the coordinator's RPCs."""

    name: str = DEFAULT_CLUSTER_NAME


Resource = NamespaceResource | RegionResource | ClusterResource


@dataclass(frozen=True)
class RequestContext:
    """What the caller declares with the call. purpose: "" when it declares none."""

    purpose: str = ""

    def __post_init__(self) -> None:
        if self.purpose:
            check_purpose(self.purpose)


@dataclass(frozen=True)
class AuthzDecision:
    """allowed, the @ids of the policies that decided (the permits that allowed, or the forbids
    that refused; none when nothing allowed), and a sentence for people and error messages."""

    allowed: bool
    policy_ids: tuple[str, ...]
    reason: str
    action: str = ""
    principal: str = ""
    # Policies that failed to evaluate (they are skipped, as Cedar specifies).
    errors: tuple[str, ...] = field(default=(), compare=False)
