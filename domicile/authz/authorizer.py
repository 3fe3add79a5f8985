"""Authorization decisions: may this principal make this call on this resource, and why.

Built to run on every RPC: the policies and schema are parsed and validated once, and the Cedar
entities of each (principal, resource) pair are built once and kept (a bounded LRU), so a
decision is one Cedar evaluation. Only a refusal does more work, to say what would allow it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cedarpy

from domicile.authz.actions import ActionSpec, ResourceKind, action
from domicile.authz.entities import (
    action_uid,
    principal_entity,
    principal_uid,
    resource_entities,
    resource_uid,
    role_entities,
)
from domicile.authz.loader import (
    DEFAULT_POLICIES,
    DEFAULT_SCHEMA,
    PolicyBundle,
    default_text,
    load_bundle,
    read_text,
)
from domicile.authz.model import (
    DEFAULT_CLUSTER_NAME,
    AuthzDecision,
    ClusterResource,
    NamespaceResource,
    Principal,
    PrincipalKind,
    RegionResource,
    RequestContext,
    Resource,
    Role,
)
from domicile.errors import InvalidArgument, PermissionDenied

ENTITY_CACHE_SIZE = 4096
_RESOURCE_TYPES: dict[ResourceKind, type[Resource]] = {
    ResourceKind.NAMESPACE: NamespaceResource,
    ResourceKind.REGION: RegionResource,
    ResourceKind.CLUSTER: ClusterResource,
}
_NO_CONTEXT = RequestContext()


class Authorizer:
    def __init__(self, bundle: PolicyBundle, cluster_name: str = DEFAULT_CLUSTER_NAME) -> None:
        self.bundle = bundle
        self.cluster_name = cluster_name
        self._entities = functools.lru_cache(maxsize=ENTITY_CACHE_SIZE)(self._build_entities)
        # A client that keeps calling what it may not must not cost a probe of every role each time.
        self._roles_allowing = functools.lru_cache(maxsize=ENTITY_CACHE_SIZE)(self._probe_roles)

    @classmethod
    def from_text(
        cls,
        policies: str,
        schema: str,
        policies_source: str = "policies",
        schema_source: str = "schema",
        cluster_name: str = DEFAULT_CLUSTER_NAME,
    ) -> Authorizer:
        authorizer = cls(load_bundle(policies, schema, policies_source, schema_source), cluster_name)
        authorizer._check_entities(schema_source)
        return authorizer

    @classmethod
    def from_files(
        cls, policies: str | Path, schema: str | Path | None = None, cluster_name: str = DEFAULT_CLUSTER_NAME
    ) -> Authorizer:
        """Policies validated against the schema file (.cedarschema, or .json for Cedar's JSON
        form); without a schema, against the packaged one. Any problem is InvalidArgument naming
        the file, line and column."""
        policies_text = read_text(policies, "policy file")
        if schema is None:
            schema_text, schema_source = default_text(DEFAULT_SCHEMA), f"the packaged {DEFAULT_SCHEMA}"
        else:
            schema_text, schema_source = read_text(schema, "schema file"), str(schema)
        return cls.from_text(policies_text, schema_text, str(policies), schema_source, cluster_name)

    @classmethod
    def default(cls, cluster_name: str = DEFAULT_CLUSTER_NAME) -> Authorizer:
        """The packaged default policy set and schema (the same as deploy/authz)."""
        return cls.from_text(
            default_text(DEFAULT_POLICIES),
            default_text(DEFAULT_SCHEMA),
            f"the packaged {DEFAULT_POLICIES}",
            f"the packaged {DEFAULT_SCHEMA}",
            cluster_name,
        )

    @property
    def version(self) -> str:
        return self.bundle.version

    @classmethod
    def distributed(cls, policies: str, source: str, cluster_name: str = DEFAULT_CLUSTER_NAME) -> Authorizer:
        """Policies as a cluster config names them (and the topology carries them), validated
        against the packaged schema."""
        return cls.from_text(
            policies, default_text(DEFAULT_SCHEMA), source, f"the packaged {DEFAULT_SCHEMA}", cluster_name
        )

    def authorize(
        self,
        principal: Principal,
        action_name: str,
        resource: Resource,
        context: RequestContext | None = None,
    ) -> AuthzDecision:
        spec = action(action_name)
        expected = _RESOURCE_TYPES[spec.resource_kind]
        if not isinstance(resource, expected):
            raise InvalidArgument(
                f"{spec.name} acts on a {spec.resource_kind.value}, not a {type(resource).__name__}"
            )
        context = context or _NO_CONTEXT
        result = self._evaluate(principal, spec, resource, context, self._entities(principal, resource))
        ids = tuple(self.bundle.ids.get(r, r) for r in result.diagnostics.reasons)
        errors = tuple(result.diagnostics.errors)
        if result.allowed:
            return AuthzDecision(
                True, ids, f"allowed by {', '.join(ids)}", spec.name, principal.identity, errors
            )
        reason = self._refusal(principal, spec, resource, context, ids)
        return AuthzDecision(False, ids, reason, spec.name, principal.identity, errors)

    def require(
        self,
        principal: Principal,
        action_name: str,
        resource: Resource,
        context: RequestContext | None = None,
    ) -> AuthzDecision:
        """authorize, raising PermissionDenied (whose message is the reason) on a refusal."""
        decision = self.authorize(principal, action_name, resource, context)
        if not decision.allowed:
            raise PermissionDenied(decision.reason, decision.policy_ids)
        return decision

    def action_classes(self, action_name: str) -> tuple[str, ...]:
        return self.bundle.action_classes.get(action_name, ())

    def _check_entities(self, schema_source: str) -> None:
        """One decision on each kind of resource, so that a schema that validates the policies
        but does not describe the entities and context every decision builds (an attribute
        renamed or retyped, say) is refused when it is loaded, not by Cedar on every call."""
        probe = Principal(f"spiffe://{self.cluster_name}/client/probe", PrincipalKind.CLIENT, frozenset(Role))
        samples: tuple[tuple[str, Resource], ...] = (
            ("storage.Get", NamespaceResource("probe", "probe", "public", "probe", ("probe",))),
            ("storage.GetNodeStatus", RegionResource("probe")),
            ("coordinator.GetTopology", ClusterResource()),
        )
        for action_name, resource in samples:
            try:
                self.authorize(probe, action_name, resource, RequestContext("probe"))
            except ValueError as error:
                raise InvalidArgument(
                    f"{schema_source}: the schema does not describe what Domicile builds for a "
                    f"decision on a {action(action_name).resource_kind.value} (a principal with "
                    f"kind and name, the resource's attributes, the purpose): {error}"
                ) from None

    def _build_entities(self, principal: Principal, resource: Resource) -> cedarpy.Entities:
        entities = [
            *role_entities(),
            principal_entity(principal),
            *resource_entities(resource, self.cluster_name),
        ]
        # With the schema, Cedar checks the attributes' types and adds the action hierarchy, so
        # evaluation needs no schema.
        return cedarpy.Entities.from_json_str(json.dumps(entities), self.bundle.schema)

    def _evaluate(
        self,
        principal: Principal,
        spec: ActionSpec,
        resource: Resource,
        context: RequestContext,
        entities: cedarpy.Entities,
    ) -> cedarpy.AuthzResult:
        request = {
            "principal": principal_uid(principal),
            "action": action_uid(spec.name),
            "resource": resource_uid(resource),
            "context": _context_json(context.purpose),
        }
        return cedarpy.is_authorized(request, self.bundle.policies, entities)

    def _refusal(
        self,
        principal: Principal,
        spec: ActionSpec,
        resource: Resource,
        context: RequestContext,
        forbids: tuple[str, ...],
    ) -> str:
        roles = ", ".join(principal.role_names())
        head = f"principal {principal.identity} with roles [{roles}] may not call {spec.name}{_on(resource)}"
        if forbids:
            text = f"{head}: refused by {', '.join(forbids)}"
            if isinstance(resource, NamespaceResource) and resource.purposes:
                declared = repr(context.purpose) if context.purpose else "none"
                text += (
                    f" (declared purpose: {declared}; namespace {resource.name} may be used for: "
                    f"{', '.join(resource.purposes)})"
                )
            return text
        allowed = self.allowed_roles(principal, spec.name, resource, context)
        if allowed:
            return f"{head}; allowed for roles: {', '.join(allowed)}"
        text = f"{head}; no role allows it to {principal.kind.value} {principal.name!r}"
        if isinstance(resource, NamespaceResource):
            text += f" (namespace {resource.name} is owned by {resource.owner or 'no one'!r})"
        return text

    def allowed_roles(
        self,
        principal: Principal,
        action_name: str,
        resource: Resource,
        context: RequestContext | None = None,
    ) -> list[str]:
        """The roles that would allow this call to a principal of the same name."""
        spec = action(action_name)
        return list(
            self._roles_allowing(principal.identity, principal.name, spec, resource, context or _NO_CONTEXT)
        )

    def _probe_roles(
        self, identity: str, name: str, spec: ActionSpec, resource: Resource, context: RequestContext
    ) -> tuple[str, ...]:
        allowed = []
        for role in Role:
            # A role is only worth naming for the kind of principal that can hold it.
            kind = PrincipalKind.NODE if role is Role.NODE else PrincipalKind.CLIENT
            probe = Principal(identity, kind, frozenset({role}), name)
            if self._evaluate(probe, spec, resource, context, self._entities(probe, resource)).allowed:
                allowed.append(role.value)
        return tuple(allowed)


@functools.lru_cache(maxsize=256)
def _context_json(purpose: str) -> str:
    # Purposes are few: serialize each once rather than on every decision.
    return json.dumps({"purpose": purpose})


def _on(resource: Resource) -> str:
    if isinstance(resource, NamespaceResource):
        return f" on namespace {resource.name} at {resource.region}"
    if isinstance(resource, RegionResource):
        return f" at region {resource.name}"
    return f" on cluster {resource.name}"
