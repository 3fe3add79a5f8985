"""Python SDK: `Client` (blocking) and `AsyncClient` (asyncio) with the same API.

Both ask the coordinator for the topology and send each call straight to a node: an explicit
`region=` wins; otherwise the client's preferred region when the namespace's scope allows it,
else the first up node of a region that may hold the namespace. A write refused because the
chosen region may not hold the record is retried once at a region the refusal names. Results
are plain dataclasses built from `domicile.causality` types; failures are `domicile.errors`
types. Every call has one deadline that covers its retries and the topology fetch; calls that return
a lot (the audit log) are made page by page, each page with its own deadline.

Data-subject requests (erasure, access) and legal holds are kept by the coordinator; a subject's
records are exported region by region, each streamed from that region's node.

    with Client("127.0.0.1:7400", region="eu-west-1") as client:
        client.put("customers_eu", "c-1", b"...", subject_id="c-1", subject_jurisdiction="DE")
        result = client.get("customers_eu", "c-1")

AsyncClient (async_client.py) is the implementation; Client (sync_client.py) is generated from
it by scripts/gen_sync_client.py. Routing, retries and audit paging are in modules of their own,
and every protobuf conversion is in domicile.wire.
"""

from __future__ import annotations

from domicile.client.async_client import DEFAULT_COORDINATOR, AsyncClient
from domicile.client.retries import RetryPolicy
from domicile.client.routing import route
from domicile.client.sync_client import Client
from domicile.results import (
    BatchRecord,
    ComplianceReport,
    ComplianceViolation,
    DeleteResult,
    ExportedCopy,
    GetResult,
    LinkState,
    NodeStatus,
    PutResult,
    ReadVersion,
    RemediationReceipt,
    ScanItem,
)
from domicile.topology import Link, NodeHealth, NodeInfo, Topology
from domicile.wire.limits import (
    AUDIT_PAGE_ENTRIES,
    AUDIT_PAGE_ENTRIES_MAX,
    AUDIT_TAIL_ENTRIES_MAX,
    SUBJECT_REQUESTS_LIMIT_DEFAULT,
    SUBJECT_REQUESTS_LIMIT_MAX,
    VIOLATIONS_MAX_DEFAULT,
    VIOLATIONS_MAX_LIMIT,
)
from domicile.wire.records import context_from_token, context_token
from domicile.wire.topology import topology_from_pb

# The SDK's name for a replication link since before the topology types were merged.
LinkInfo = Link

__all__ = [
    "AUDIT_PAGE_ENTRIES",
    "AUDIT_PAGE_ENTRIES_MAX",
    "AUDIT_TAIL_ENTRIES_MAX",
    "DEFAULT_COORDINATOR",
    "SUBJECT_REQUESTS_LIMIT_DEFAULT",
    "SUBJECT_REQUESTS_LIMIT_MAX",
    "VIOLATIONS_MAX_DEFAULT",
    "VIOLATIONS_MAX_LIMIT",
    "AsyncClient",
    "BatchRecord",
    "Client",
    "ComplianceReport",
    "ComplianceViolation",
    "DeleteResult",
    "ExportedCopy",
    "GetResult",
    "LinkInfo",
    "LinkState",
    "NodeHealth",
    "NodeInfo",
    "NodeStatus",
    "PutResult",
    "ReadVersion",
    "RemediationReceipt",
    "RetryPolicy",
    "ScanItem",
    "Topology",
    "context_from_token",
    "context_token",
    "route",
    "topology_from_pb",
]
