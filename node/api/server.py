"""The node's gRPC server: its options, its services, and what every call passes through.

Every call is bounded per peer (domicile.wire.peer_limits), health and reflection are kept to
the cluster's own processes and operators (domicile.authz.operational), and unary storage calls
are held to the storage message bounds (node.api.limits). Those wrappers are applied once per
method when the services are registered (domicile.wire.call_layer), not by interceptors on every
call; the servicers then authenticate and authorize each call themselves.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from domicile.v1 import replication_pb2_grpc as rpb_grpc
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from domicile.wire.call_layer import CallLayer, Wrapper
from node.api.limits import NODE_SERVER_OPTIONS
from node.api.replication import ReplicationServicer
from node.api.storage import StorageServicer


def node_server(
    storage: StorageServicer,
    replication: ReplicationServicer,
    health_servicer: health.aio.HealthServicer,
    reflected: tuple[str, ...],
    wrappers: list[Wrapper],
) -> tuple[grpc.aio.Server, CallLayer]:
    """A server (not yet bound nor started) with the node's services behind `wrappers` (the
    first is the outermost) and reflection of the `reflected` service names."""
    layer = CallLayer(wrappers)
    spb_grpc.add_StorageNodeServiceServicer_to_server(storage, layer)
    rpb_grpc.add_ReplicationServiceServicer_to_server(replication, layer)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, layer)
    # enable_server_reflection picks its asyncio servicer only for a grpc.aio.Server itself.
    names = (*reflected, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflector = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, layer)
    server = grpc.aio.server(options=NODE_SERVER_OPTIONS, handlers=[layer])
    return server, layer
