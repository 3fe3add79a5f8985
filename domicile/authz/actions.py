"""Every RPC of domicile.v1 as an authorization action, read from the generated descriptors.

The list is derived, not written down, so that a new RPC is an action the moment it is added
to a proto: loading an Authorizer then fails until the schema declares it, and a unit test
fails until this module says which kind of resource it acts on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from domicile.errors import InvalidArgument
from domicile.v1 import coordinator_pb2, replication_pb2, storage_node_pb2


class ResourceKind(enum.Enum):
    """What a call acts on: a namespace at a region (record RPCs), a region's node, or the cluster."""

    NAMESPACE = "namespace"
    REGION = "region"
    CLUSTER = "cluster"


# Action names are "<prefix>.<Rpc>": short, stable and readable in policies and audit entries.
SERVICE_PREFIXES = {
    "StorageNodeService": "storage",
    "ReplicationService": "replication",
    "CoordinatorService": "coordinator",
}

_SERVICES = tuple(
    service
    for module in (storage_node_pb2, replication_pb2, coordinator_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
)

# A node's RPC whose request names a namespace acts on that namespace's records there; the other
# RPCs a node serves act on its region; the coordinator's act on the cluster.
_NODE_PREFIXES = frozenset({"storage", "replication"})


@dataclass(frozen=True)
class ActionSpec:
    name: str
    service: str
    rpc: str
    resource_kind: ResourceKind
    streaming: bool


def _spec(service: ServiceDescriptor, method: MethodDescriptor) -> ActionSpec:
    prefix = SERVICE_PREFIXES[service.name]
    if prefix not in _NODE_PREFIXES:
        kind = ResourceKind.CLUSTER
    elif "namespace" in method.input_type.fields_by_name:
        kind = ResourceKind.NAMESPACE
    else:
        kind = ResourceKind.REGION
    streaming = method.client_streaming or method.server_streaming
    return ActionSpec(f"{prefix}.{method.name}", service.full_name, method.name, kind, streaming)


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec for service in _SERVICES for spec in (_spec(service, m) for m in service.methods)
}


def rpc_methods() -> list[str]:
    """Every RPC as its gRPC method path, /domicile.v1.Service/Rpc, from the descriptors."""
    return [f"/{service.full_name}/{method.name}" for service in _SERVICES for method in service.methods]


def action_for_method(method: str) -> ActionSpec:
    """The action of a gRPC method path (what a server interceptor sees)."""
    _, _, tail = method.partition("/")
    service_full_name, _, rpc = tail.partition("/")
    prefix = SERVICE_PREFIXES.get(service_full_name.rpartition(".")[2])
    spec = ACTIONS.get(f"{prefix}.{rpc}") if prefix else None
    if spec is None:
        raise InvalidArgument(f"no action for gRPC method {method!r}")
    return spec


def action(name: str) -> ActionSpec:
    spec = ACTIONS.get(name)
    if spec is None:
        services = ", ".join(f"{p}.<Rpc>" for p in SERVICE_PREFIXES.values())
        raise InvalidArgument(
            f"unknown action {name!r}: actions are the RPCs of domicile.v1 named {services}, "
            "e.g. storage.Put or coordinator.GetTopology"
        )
    return spec
