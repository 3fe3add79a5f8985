"""A cluster config whose JSON Schemas would make stored values invalid is refused at load.

Schemas evolve additively, and only the nodes can see what is stored (the coordinator holds no
record). So when the coordinator starts with schemas other than those it last distributed, it
asks every registered node, before it publishes anything, to count the stored live values that
would fail them (GetNodeStatus with candidate_schemas: each node walks its store and opens each
value, node/compliance/stats.py). Any such value refuses the config, with the count per
namespace and node, and the topology in force stays what it was. A node that does not answer
refuses it too (what it holds is unknown), unless the operator starts the coordinator with
`--allow-unchecked-schemas`.

The schemas last distributed are remembered by a digest in the coordinator's store, so an
unchanged config (a restart, a new policy pack) asks nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from domicile.cluster import ClusterSpec
from domicile.errors import FailedPrecondition, Unavailable
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.topology import NodeInfo
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc

log = logging.getLogger(__name__)

# The meta key of the digest of the schemas last distributed.
SCHEMAS_DIGEST_META = "schemas_digest"
# Nodes asked at once (each walks its whole store).
INFLIGHT_MAX = 8


def schemas_of(cluster: ClusterSpec) -> dict[str, str]:
    return {n.name: n.json_schema for n in cluster.namespaces if n.json_schema}


def schemas_digest(schemas: Mapping[str, str]) -> str:
    text = json.dumps(dict(sorted(schemas.items())), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class SchemaCheck:
    """What the nodes answered: invalid stored values per (namespace, node), nodes not asked."""

    invalid: dict[tuple[str, str], int] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())


async def count_invalid(
    nodes: Sequence[NodeInfo], schemas: Mapping[str, str], dialer: Dialer, deadline_s: float
) -> SchemaCheck:
    check = SchemaCheck()
    limit = asyncio.Semaphore(INFLIGHT_MAX)

    async def one(node: NodeInfo) -> None:
        async with limit:
            try:
                async with dialer.channel(
                    node.address, ExpectedPeer.node(node.region, node.node_id)
                ) as channel:
                    status = await spb_grpc.StorageNodeServiceStub(channel).GetNodeStatus(
                        spb.GetNodeStatusRequest(candidate_schemas=dict(schemas)), timeout=deadline_s
                    )
            except grpc.aio.AioRpcError as exc:
                check.unreachable[node.node_id] = f"{exc.code().name}: {exc.details()}"
                return
            for stats in status.namespace_stats:
                if stats.candidate_invalid:
                    k = (stats.namespace, node.node_id)
                    check.invalid[k] = check.invalid.get(k, 0) + stats.candidate_invalid

    await asyncio.gather(*(one(n) for n in nodes))
    return check


async def refuse_invalidating_schemas(
    cluster: ClusterSpec,
    source: str,
    nodes: Sequence[NodeInfo],
    previous_digest: str,
    dialer: Dialer,
    *,
    deadline_s: float,
    allow_unchecked: bool,
) -> str:
    """Raises FailedPrecondition when the config's schemas would make stored values invalid,
    Unavailable when a node could not be asked (unless allow_unchecked); returns the digest to
    remember once the config is in force."""
    schemas = schemas_of(cluster)
    digest = schemas_digest(schemas)
    if digest == previous_digest or not schemas or not nodes:
        return digest
    log.info(
        "the schemas of %s differ from those last distributed; asking %d nodes for stored values "
        "they would make invalid",
        source,
        len(nodes),
    )
    check = await count_invalid(nodes, schemas, dialer, deadline_s)
    if check.invalid_total:
        per = "; ".join(f"{ns} at {node}: {count}" for (ns, node), count in sorted(check.invalid.items()))
        raise FailedPrecondition(
            f"cluster config {source} refused: its schemas would make {check.invalid_total} stored "
            f"values invalid ({per}). Schemas evolve additively (add optional properties; do not "
            "require, remove or narrow one); `domicile catalog check-schemas --cluster-config "
            f"{source}` lists the counts per region. Nothing of this config was rolled out."
        )
    if check.unreachable and not allow_unchecked:
        who = "; ".join(f"{node}: {why}" for node, why in sorted(check.unreachable.items()))
        raise Unavailable(
            f"cluster config {source} refused: its schemas changed and these nodes could not be "
            f"asked whether their stored values still validate ({who}). Start them, or start the "
            "coordinator with --allow-unchecked-schemas to roll the schemas out unchecked."
        )
    for node, why in sorted(check.unreachable.items()):
        log.warning("schemas rolled out without asking node %s (%s): --allow-unchecked-schemas", node, why)
    return digest
