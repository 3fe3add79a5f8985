"""The Cedar entities of a request: the principal with its roles, the resource with its parents."""

from __future__ import annotations

from typing import Any

from domicile.authz.model import (
    ClusterResource,
    NamespaceResource,
    Principal,
    RegionResource,
    Resource,
    Role,
)

NAMESPACE = "Domicile"
PRINCIPAL_TYPE = f"{NAMESPACE}::Principal"
ROLE_TYPE = f"{NAMESPACE}::Role"
ACTION_TYPE = f"{NAMESPACE}::Action"
CLUSTER_TYPE = f"{NAMESPACE}::Cluster"
REGION_TYPE = f"{NAMESPACE}::Region"
NAMESPACE_TYPE = f"{NAMESPACE}::Namespace"

Json = dict[str, Any]


def uid(entity_type: str, entity_id: str) -> Json:
    return {"type": entity_type, "id": entity_id}


def action_uid(name: str) -> Json:
    return uid(ACTION_TYPE, name)


def principal_uid(principal: Principal) -> Json:
    return uid(PRINCIPAL_TYPE, principal.identity)


def resource_uid(resource: Resource) -> Json:
    if isinstance(resource, NamespaceResource):
        # One entity per namespace and region: the region is part of what is acted on.
        return uid(NAMESPACE_TYPE, f"{resource.name}@{resource.region}")
    if isinstance(resource, RegionResource):
        return uid(REGION_TYPE, resource.name)
    return uid(CLUSTER_TYPE, resource.name)


def role_entities() -> list[Json]:
    return [{"uid": uid(ROLE_TYPE, r.value), "attrs": {}, "parents": []} for r in Role]


def principal_entity(principal: Principal) -> Json:
    return {
        "uid": principal_uid(principal),
        "attrs": {"kind": principal.kind.value, "name": principal.name},
        "parents": [uid(ROLE_TYPE, r) for r in principal.role_names()],
    }


def resource_entities(resource: Resource, cluster: str) -> list[Json]:
    """The resource and its ancestors (region, cluster)."""
    cluster_entity = {"uid": uid(CLUSTER_TYPE, cluster), "attrs": {}, "parents": []}
    if isinstance(resource, ClusterResource):
        return [{"uid": resource_uid(resource), "attrs": {}, "parents": []}]
    region = resource.region if isinstance(resource, NamespaceResource) else resource.name
    region_entity = {
        "uid": uid(REGION_TYPE, region),
        "attrs": {"name": region},
        "parents": [uid(CLUSTER_TYPE, cluster)],
    }
    if isinstance(resource, RegionResource):
        return [region_entity, cluster_entity]
    namespace_entity = {
        "uid": resource_uid(resource),
        "attrs": {
            "name": resource.name,
            "region": resource.region,
            "classification": resource.classification,
            "owner": resource.owner,
            "purposes": list(resource.purposes),
        },
        "parents": [uid(REGION_TYPE, region)],
    }
    return [namespace_entity, region_entity, cluster_entity]
