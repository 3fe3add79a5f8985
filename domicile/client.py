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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import random
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from domicile.audit import SignedHead, StoredEntry
from domicile.audit_wire import entry_from_pb, head_from_pb
from domicile.causality import CausalContext, Version
from domicile.cluster import NamespaceSpec, RegionSpec
from domicile.codec import context_from_pb, context_to_pb, version_from_pb
from domicile.errors import (
    DataCorruption,
    DeadlineExceeded,
    DomicileError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PlacementRefused,
    Unavailable,
)
from domicile.model import (
    Classification,
    ConflictMode,
    Limits,
    check_jurisdiction,
    check_key,
    check_namespace_name,
)
from domicile.subject_wire import hold_from_pb, request_from_pb
from domicile.subjects import (
    HoldScope,
    LegalHold,
    RequestKind,
    SubjectRequest,
    check_reason,
    check_subject_id,
)
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cgrpc
from domicile.v1 import record_pb2 as rpb
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as sgrpc
from domicile.wire_errors import error_from_rpc

DEFAULT_COORDINATOR = "127.0.0.1:7400"
_LIMITS = Limits()
# A Get may return several siblings of value_bytes_max each; leave room for them.
_MESSAGE_BYTES_MAX = 64 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", _MESSAGE_BYTES_MAX),
)

# The audit log is read in pages of this many entries, each page one call with its own deadline,
# so that a log of millions of entries never has to arrive within one deadline.
AUDIT_PAGE_ENTRIES = 10_000
AUDIT_PAGE_ENTRIES_MAX = 100_000
AUDIT_TAIL_ENTRIES_MAX = 10_000
# Bounds of ScanComplianceRequest.violations_max.
VIOLATIONS_MAX_DEFAULT = 1000
VIOLATIONS_MAX_LIMIT = 10_000
# Bounds of ListSubjectRequestsRequest.limit.
SUBJECT_REQUESTS_LIMIT_DEFAULT = 100
SUBJECT_REQUESTS_LIMIT_MAX = 1000

R = TypeVar("R")


# ---------------------------------------------------------------------------------------------
# Topology


class NodeHealth(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


_HEALTH_FROM_PB = {cpb.NODE_HEALTH_UP: NodeHealth.UP, cpb.NODE_HEALTH_DOWN: NodeHealth.DOWN}


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    region: str
    address: str
    metrics_address: str = ""
    health: NodeHealth = NodeHealth.UNKNOWN
    last_heartbeat_unix_ms: int = 0

    def describe(self) -> str:
        return f"node {self.node_id} ({self.region}) at {self.address}"


@dataclass(frozen=True)
class LinkInfo:
    source_node_id: str
    target_node_id: str
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topology:
    revision: int = 0
    regions: tuple[RegionSpec, ...] = ()
    nodes: tuple[NodeInfo, ...] = ()
    namespaces: tuple[NamespaceSpec, ...] = ()
    links: tuple[LinkInfo, ...] = ()
    policy_version: str = ""
    # The residency policy pack in force as YAML; "" when only the namespace scopes apply.
    policy_pack_yaml: str = ""

    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    def namespace(self, name: str) -> NamespaceSpec | None:
        return next((n for n in self.namespaces if n.name == name), None)

    def nodes_in(self, region: str) -> list[NodeInfo]:
        return [n for n in self.nodes if n.region == region]


def topology_from_pb(msg: cpb.Topology) -> Topology:
    return Topology(
        revision=msg.revision,
        regions=tuple(RegionSpec(r.name, r.country, r.jurisdiction) for r in msg.regions),
        nodes=tuple(
            NodeInfo(
                node_id=n.node_id,
                region=n.region,
                address=n.address,
                metrics_address=n.metrics_address,
                health=_HEALTH_FROM_PB.get(n.health, NodeHealth.UNKNOWN),
                last_heartbeat_unix_ms=n.last_heartbeat_unix_ms,
            )
            for n in msg.nodes
        ),
        namespaces=tuple(
            NamespaceSpec(
                name=ns.name,
                regions=tuple(ns.regions),
                is_global=bool(getattr(ns, "global")),
                conflict_mode=_enum_or(ConflictMode, ns.conflict_mode, ConflictMode.UNSPECIFIED),
                classification=_enum_or(Classification, ns.classification, Classification.UNSPECIFIED),
                owner=ns.owner,
                retention_class=ns.retention_class,
                description=ns.description,
            )
            for ns in msg.namespaces
        ),
        links=tuple(LinkInfo(li.source_node_id, li.target_node_id, tuple(li.namespaces)) for li in msg.links),
        policy_version=msg.policy_version,
        policy_pack_yaml=msg.policy_pack_yaml,
    )


E = TypeVar("E", bound=enum.IntEnum)


def _enum_or(kind: type[E], value: int, default: E) -> E:
    # A newer coordinator may send values this client does not know; routing does not need them.
    try:
        return kind(value)
    except ValueError:
        return default


def route(
    topology: Topology,
    namespace: str | None,
    *,
    region: str | None = None,
    preferred_region: str | None = None,
    allowed_regions: Sequence[str] | None = None,
    avoid: Collection[str] = (),
    node_id: str | None = None,
) -> NodeInfo:
    """The node a call goes to.

    `region` (explicit) restricts the choice to that region. Otherwise the candidates are the
    nodes of `allowed_regions` (the regions a refusal named) or of the namespace's scope (every
    region for a global or unknown namespace). Among them: nodes not in `avoid` (node ids that
    just failed), then up nodes, then the preferred region, then scope order. Nodes the
    coordinator reports down stay as a last resort because its view can lag behind a restart.
    `node_id` asks for one node by id.
    """
    if node_id is not None:
        found = next((n for n in topology.nodes if n.node_id == node_id), None)
        if found is None:
            known_nodes = ", ".join(n.node_id for n in topology.nodes) or "none"
            raise InvalidArgument(f"unknown node {node_id!r}; registered nodes: {known_nodes}")
        return found
    known = topology.region_names()
    if preferred_region is not None and preferred_region not in known:
        raise InvalidArgument(
            f"client region {preferred_region!r} is not a region of the cluster; "
            f"regions: {', '.join(known) or 'none'}"
        )
    if region is not None:
        if region not in known:
            raise InvalidArgument(f"unknown region {region!r}; regions: {', '.join(known) or 'none'}")
        scope = [region]
        what = f"region {region}"
    elif allowed_regions is not None:
        scope = [r for r in allowed_regions if r in known]
        what = f"the regions that may hold the record ({', '.join(allowed_regions) or 'none'})"
    else:
        spec = topology.namespace(namespace) if namespace else None
        scope = known if spec is None or spec.is_global else list(spec.regions)
        what = f"the regions that may hold namespace {namespace}" if spec else "the cluster"
        what = f"{what} ({', '.join(scope) or 'none'})"
    rank = {r: i for i, r in enumerate(scope)}
    candidates = [n for n in topology.nodes if n.region in rank]
    if not candidates:
        raise Unavailable(f"no node is registered in {what}")
    return min(
        candidates,
        key=lambda n: (
            n.node_id in avoid,
            n.health is not NodeHealth.UP,
            n.region != preferred_region,
            rank[n.region],
            n.node_id,
        ),
    )


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ReadVersion(Version):
    """A version as a read returned it. `redacted_fields` names the fields the residency policy
    removed from this copy (e.g. value and subject_id); empty when the copy is complete."""

    redacted_fields: tuple[str, ...] = ()

    @property
    def redacted(self) -> bool:
        return bool(self.redacted_fields)


@dataclass(frozen=True)
class PutResult:
    version: Version
    context: CausalContext
    lsn: int
    region: str


@dataclass(frozen=True)
class GetResult:
    found: bool
    versions: tuple[ReadVersion, ...]
    context: CausalContext
    region: str

    @property
    def values(self) -> tuple[bytes, ...]:
        return tuple(v.value for v in self.versions)

    @property
    def value(self) -> bytes | None:
        """The value, None when not found. Concurrent siblings must be resolved explicitly."""
        if not self.versions:
            return None
        if len(self.versions) > 1:
            raise FailedPrecondition(
                f"the record has {len(self.versions)} concurrent values; read .versions and put the "
                "resolved value with context=result.context"
            )
        return self.versions[0].value


@dataclass(frozen=True)
class DeleteResult:
    existed: bool
    version: Version
    context: CausalContext
    lsn: int
    region: str


@dataclass(frozen=True)
class ScanItem:
    key: str
    versions: tuple[ReadVersion, ...]
    context: CausalContext


@dataclass(frozen=True)
class LinkState:
    source_node_id: str
    target_node_id: str
    acked_lsn: int
    backlog: int
    connected: bool
    lag_ms_p99: float
    applied_total: int


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    region: str
    topology_revision: int
    records_stored: int
    last_lsn: int
    outbound: tuple[LinkState, ...]
    inbound: tuple[LinkState, ...]
    conflicts_total: int
    tombstones_stored: int
    policy_version: str
    uptime_seconds: float
    audit_entries: int = 0
    # Entries covered by the last signed head the coordinator accepted; 0 when none yet.
    audit_exported_size: int = 0
    # Record copies the node's last compliance scan found outside what the policy allows.
    compliance_violations: int = 0


@dataclass(frozen=True)
class ComplianceViolation:
    """A record copy that the policy in force does not allow where it is."""

    namespace: str
    key: str
    region: str
    origin_region: str
    classification: Classification
    subject_jurisdiction: str
    rule: str
    reason: str
    allowed_regions: tuple[str, ...]


@dataclass(frozen=True)
class ComplianceReport:
    """What one region's compliance scan found. `violations` lists at most the violations_max
    asked for; `violations_total` counts them all."""

    region: str
    node_id: str
    policy_version: str
    versions_checked: int
    violations_total: int
    violations: tuple[ComplianceViolation, ...]

    @property
    def compliant(self) -> bool:
        return self.violations_total == 0

    @property
    def violations_unlisted(self) -> int:
        return max(0, self.violations_total - len(self.violations))


@dataclass(frozen=True)
class ExportedCopy:
    """One region's copy of one record of a data subject, as ExportSubject streamed it.

    `versions` are the live versions the region holds, values decrypted. A version whose value
    the residency policy withheld from this export is still listed, with "value" in its
    redacted_fields and an empty value: a reader must be able to tell "withheld" from "empty"."""

    namespace: str
    key: str
    region: str
    classification: Classification
    versions: tuple[ReadVersion, ...]
    retention_class: str = ""
    # 0: no retention period (kept until deleted).
    retention_period_s: int = 0
    # The residency decision's legal basis for holding this copy in `region`.
    legal_basis: str = ""
    # Why a legal hold covers the record; "" when none does.
    hold_reason: str = ""
    node_id: str = ""

    @property
    def held(self) -> bool:
        return bool(self.hold_reason)


_VERSION_FIELDS = tuple(f.name for f in fields(Version))


def _read_version(msg: rpb.RecordVersion) -> ReadVersion:
    v = version_from_pb(msg)
    return ReadVersion(
        **{name: getattr(v, name) for name in _VERSION_FIELDS}, redacted_fields=tuple(msg.redacted_fields)
    )


def _versions(msgs: Sequence[rpb.RecordVersion], where: str) -> tuple[ReadVersion, ...]:
    versions = tuple(_read_version(m) for m in msgs)
    for v in versions:
        # End to end: the node checks too, but a value can also be damaged on the way. A
        # redacted value is not there to check.
        if v.checksum and "value" not in v.redacted_fields and not v.checksum_ok():
            raise DataCorruption(
                f"{where}: version {v.dot.node_id}:{v.dot.counter} failed its sha256 checksum"
            )
    return versions


def _link(msg: spb.LinkStatus) -> LinkState:
    return LinkState(
        source_node_id=msg.source_node_id,
        target_node_id=msg.target_node_id,
        acked_lsn=msg.acked_lsn,
        backlog=msg.backlog,
        connected=msg.connected,
        lag_ms_p99=msg.lag_ms_p99,
        applied_total=msg.applied_total,
    )


def _node_status(msg: spb.GetNodeStatusResponse) -> NodeStatus:
    return NodeStatus(
        node_id=msg.node_id,
        region=msg.region,
        topology_revision=msg.topology_revision,
        records_stored=msg.records_stored,
        last_lsn=msg.last_lsn,
        outbound=tuple(_link(m) for m in msg.outbound),
        inbound=tuple(_link(m) for m in msg.inbound),
        conflicts_total=msg.conflicts_total,
        tombstones_stored=msg.tombstones_stored,
        policy_version=msg.policy_version,
        uptime_seconds=msg.uptime_seconds,
        audit_entries=msg.audit_entries,
        audit_exported_size=msg.audit_exported_size,
        compliance_violations=msg.compliance_violations,
    )


def _compliance_report(msg: spb.ScanComplianceResponse, node: NodeInfo) -> ComplianceReport:
    return ComplianceReport(
        region=msg.region or node.region,
        node_id=node.node_id,
        policy_version=msg.policy_version,
        versions_checked=msg.versions_checked,
        violations_total=msg.violations_total,
        violations=tuple(
            ComplianceViolation(
                namespace=v.namespace,
                key=v.key,
                region=v.region or node.region,
                origin_region=v.origin_region,
                classification=_enum_or(Classification, v.classification, Classification.UNSPECIFIED),
                subject_jurisdiction=v.subject_jurisdiction,
                rule=v.rule,
                reason=v.reason,
                allowed_regions=tuple(v.allowed_regions),
            )
            for v in msg.violations
        ),
    )


def _audit_page(msgs: Sequence[spb.ReadAuditLogResponse]) -> tuple[SignedHead | None, list[StoredEntry]]:
    head: SignedHead | None = None
    entries: list[StoredEntry] = []
    for msg in msgs:
        if head is None and msg.HasField("head"):
            head = head_from_pb(msg.head)
        entries.extend(entry_from_pb(r) for r in msg.records)
    return head, entries


def _exported_copies(msg: spb.ExportSubjectResponse, node: NodeInfo) -> list[ExportedCopy]:
    where = f"export from {node.describe()}"
    return [
        ExportedCopy(
            namespace=r.namespace,
            key=r.key,
            region=r.region or node.region,
            classification=_enum_or(Classification, r.classification, Classification.UNSPECIFIED),
            versions=_versions(r.versions, where),
            retention_class=r.retention_class,
            retention_period_s=r.retention_period_seconds,
            legal_basis=r.legal_basis,
            hold_reason=r.hold_reason,
            node_id=node.node_id,
        )
        for r in msg.records
    ]


def _subject_request(msg: Any, what: str) -> SubjectRequest:
    """The request of a coordinator response that carries one in its `request` field."""
    if not msg.HasField("request"):
        raise DomicileError(f"{what}: the coordinator answered without the request")
    return request_from_pb(msg.request)


def _legal_hold(msg: Any, what: str) -> LegalHold:
    if not msg.HasField("hold"):
        raise DomicileError(f"{what}: the coordinator answered without the hold")
    return hold_from_pb(msg.hold)


def _put_result(msg: spb.PutResponse, node: NodeInfo) -> PutResult:
    return PutResult(
        version=version_from_pb(msg.version),
        context=context_from_pb(msg.context),
        lsn=msg.lsn,
        region=msg.region or node.region,
    )


def _get_result(msg: spb.GetResponse, node: NodeInfo) -> GetResult:
    return GetResult(
        found=msg.found,
        versions=_versions(msg.versions, node.describe()),
        context=context_from_pb(msg.context),
        region=msg.region or node.region,
    )


def _delete_result(msg: spb.DeleteResponse, node: NodeInfo) -> DeleteResult:
    return DeleteResult(
        existed=msg.existed,
        version=version_from_pb(msg.version),
        context=context_from_pb(msg.context),
        lsn=msg.lsn,
        region=node.region,
    )


def _scan_items(msg: spb.ScanResponse, node: NodeInfo) -> list[ScanItem]:
    where = node.describe()
    return [ScanItem(i.key, _versions(i.versions, where), context_from_pb(i.context)) for i in msg.items]


# ---------------------------------------------------------------------------------------------
# Requests


def _check_name(namespace: str, key: str | None = None) -> None:
    if not isinstance(namespace, str):
        raise InvalidArgument(f"namespace must be a str; got {type(namespace).__name__}")
    check_namespace_name(namespace)
    if key is not None:
        if not isinstance(key, str):
            raise InvalidArgument(f"key must be a str; got {type(key).__name__}")
        check_key(key, _LIMITS)


def _classification(value: Classification | str | None) -> Classification:
    if value is None:
        return Classification.UNSPECIFIED
    if isinstance(value, Classification):
        return value
    if isinstance(value, str):
        return Classification.parse(value)
    raise InvalidArgument(f"classification must be a Classification or its name; got {type(value).__name__}")


def _context_pb(context: CausalContext | None, out: rpb.CausalContext) -> None:
    if context is None:
        return
    if not isinstance(context, CausalContext):
        raise InvalidArgument(
            f"context must be the CausalContext of an earlier result; got {type(context).__name__}"
        )
    out.SetInParent()
    context_to_pb(context, out)


def _put_request(
    namespace: str,
    key: str,
    value: bytes,
    context: CausalContext | None,
    subject_id: str,
    subject_jurisdiction: str,
    classification: Classification | str | None,
    content_type: str,
) -> spb.PutRequest:
    _check_name(namespace, key)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument(f"value must be bytes; got {type(value).__name__} (encode text first)")
    req = spb.PutRequest(
        namespace=namespace,
        key=key,
        value=bytes(value),
        content_type=content_type,
        subject_id=subject_id,
        subject_jurisdiction=subject_jurisdiction,
        classification=int(_classification(classification)),  # type: ignore[arg-type]
    )
    _context_pb(context, req.context)
    return req


def _optional_text(value: str | None, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str; got {type(value).__name__}")
    return value


def _delete_request(
    namespace: str,
    key: str,
    context: CausalContext | None,
    subject_id: str | None = None,
    subject_jurisdiction: str | None = None,
) -> spb.DeleteRequest:
    _check_name(namespace, key)
    req = spb.DeleteRequest(
        namespace=namespace,
        key=key,
        subject_id=_optional_text(subject_id, "subject_id"),
        subject_jurisdiction=_optional_text(subject_jurisdiction, "subject_jurisdiction"),
    )
    _context_pb(context, req.context)
    return req


def _check_region_name(region: str) -> None:
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"a region name is required; got {region!r}")


def _check_known_region(topology: Topology, region: str) -> None:
    known = topology.region_names()
    if region not in known:
        raise InvalidArgument(f"unknown region {region!r}; regions: {', '.join(known) or 'none'}")


def _check_violations_max(violations_max: int) -> None:
    if not 1 <= violations_max <= VIOLATIONS_MAX_LIMIT:
        raise InvalidArgument(f"violations_max is {violations_max}; use 1 to {VIOLATIONS_MAX_LIMIT}")


class _AuditCursor:
    """Where a paged read of an audit log stands: the next request and when it is done.

    Pages go by seq: page k asks for the entries after `after_seq`, at most page_entries seq
    positions. A page may hold fewer entries (entries deleted from the log leave gaps) or run a
    little past them, so the next page starts after both. The read ends at the size of the head
    the first page carried: each page is itself audited, so a read that chased the growing end
    of the log could go on for ever.
    """

    def __init__(self, region: str, after_seq: int, limit: int, tail: bool, page_entries: int) -> None:
        _check_region_name(region)
        if after_seq < 0:
            raise InvalidArgument(f"after_seq is {after_seq}; it must be 0 or more")
        if limit < 0:
            raise InvalidArgument(f"limit is {limit}; use 0 (every entry) or more")
        if tail and not 1 <= limit <= AUDIT_TAIL_ENTRIES_MAX:
            raise InvalidArgument(f"a tail read needs a limit of 1 to {AUDIT_TAIL_ENTRIES_MAX}; got {limit}")
        if not 1 <= page_entries <= AUDIT_PAGE_ENTRIES_MAX:
            raise InvalidArgument(f"page_entries is {page_entries}; use 1 to {AUDIT_PAGE_ENTRIES_MAX}")
        self.region = region
        self.after_seq = after_seq
        self.remaining: int | None = limit or None
        self.tail = tail
        self.page_entries = page_entries
        self.end_seq: int | None = None
        self.done = False
        self._requested = 0

    def request(self) -> spb.ReadAuditLogRequest:
        if self.tail:
            return spb.ReadAuditLogRequest(limit=self.remaining or 0, tail=True)
        self._requested = min(self.page_entries, self.remaining or self.page_entries)
        return spb.ReadAuditLogRequest(after_seq=self.after_seq, limit=self._requested)

    def advance(self, head: SignedHead | None, entries: list[StoredEntry]) -> list[StoredEntry]:
        """Takes in a page; returns its entries that belong to the read."""
        if self.tail:
            self.done = True
            return entries
        if self.end_seq is None:
            self.end_seq = head.size if head is not None else None
        if self.end_seq is not None:
            entries = [e for e in entries if e.seq <= self.end_seq]
        if self.remaining is not None:
            entries = entries[: self.remaining]
            self.remaining -= len(entries)
        self.after_seq = max([self.after_seq + self._requested, *(e.seq for e in entries)])
        if self.remaining == 0:
            self.done = True
        elif self.end_seq is not None:
            self.done = self.after_seq >= self.end_seq
        else:
            # Without a head, only an empty page says where the log ends.
            self.done = not entries
        return entries

    def what(self) -> str:
        return f"read audit log of {self.region}"


def _audit_rpc(req: spb.ReadAuditLogRequest) -> Callable[[Any, float], list[spb.ReadAuditLogResponse]]:
    # A page is read to its end inside the call, so that a broken stream is retried like any call.
    return lambda stub, timeout: list(stub.ReadAuditLog(req, timeout=timeout))


def _audit_rpc_async(
    req: spb.ReadAuditLogRequest,
) -> Callable[[Any, float], Awaitable[list[spb.ReadAuditLogResponse]]]:
    async def rpc(stub: Any, seconds: float) -> list[spb.ReadAuditLogResponse]:
        return [msg async for msg in stub.ReadAuditLog(req, timeout=seconds)]

    return rpc


def _scan_rpc(req: spb.ScanRequest) -> Callable[[Any, float], Any]:
    return lambda stub, timeout: stub.Scan(req, timeout=timeout)


def _check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= _LIMITS.scan_page_size_max:
        raise InvalidArgument(f"page_size is {page_size}; use 1 to {_LIMITS.scan_page_size_max}")


def _subject(subject_id: str) -> str:
    if not isinstance(subject_id, str):
        raise InvalidArgument(f"subject_id must be a str; got {type(subject_id).__name__}")
    check_subject_id(subject_id)
    return subject_id


def _reason(reason: str, *, required: bool) -> str:
    if not isinstance(reason, str):
        raise InvalidArgument(f"reason must be a str; got {type(reason).__name__}")
    check_reason(reason, required=required)
    return reason


def _jurisdiction(subject_jurisdiction: str | None) -> str:
    code = _optional_text(subject_jurisdiction, "subject_jurisdiction")
    check_jurisdiction(code)
    return code


def _id(value: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"a {name} is required, as printed when it was created; got {value!r}")
    return value


def _erase_request(subject_id: str, reason: str, subject_jurisdiction: str | None) -> cpb.EraseSubjectRequest:
    return cpb.EraseSubjectRequest(
        subject_id=_subject(subject_id),
        reason=_reason(reason, required=True),
        subject_jurisdiction=_jurisdiction(subject_jurisdiction),
    )


def _access_request(
    subject_id: str, reason: str, subject_jurisdiction: str | None
) -> cpb.OpenSubjectRequestRequest:
    return cpb.OpenSubjectRequestRequest(
        kind=int(RequestKind.ACCESS),  # type: ignore[arg-type]
        subject_id=_subject(subject_id),
        subject_jurisdiction=_jurisdiction(subject_jurisdiction),
        reason=_reason(reason, required=False),
    )


def _complete_request(request_id: str, records_exported: int) -> cpb.CompleteSubjectRequestRequest:
    if isinstance(records_exported, bool) or not isinstance(records_exported, int) or records_exported < 0:
        raise InvalidArgument(
            f"records_exported is {records_exported!r}; it must be a whole number, 0 or more"
        )
    return cpb.CompleteSubjectRequestRequest(
        request_id=_id(request_id, "request id"), records_exported=records_exported
    )


def _list_requests(open_only: bool, limit: int) -> cpb.ListSubjectRequestsRequest:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= SUBJECT_REQUESTS_LIMIT_MAX:
        raise InvalidArgument(f"limit is {limit!r}; use 1 to {SUBJECT_REQUESTS_LIMIT_MAX}")
    return cpb.ListSubjectRequestsRequest(open_only=bool(open_only), limit=limit)


def _hold_scope(scope: HoldScope | str) -> HoldScope:
    if isinstance(scope, HoldScope):
        if scope is HoldScope.UNSPECIFIED:
            raise InvalidArgument("a legal hold scope is required; allowed: subject, namespace, key")
        return scope
    if isinstance(scope, str):
        return HoldScope.parse(scope)
    raise InvalidArgument(f"scope must be a HoldScope or its name; got {type(scope).__name__}")


def _place_hold_request(
    scope: HoldScope | str, subject_id: str, namespace: str, key: str, reason: str
) -> cpb.PlaceLegalHoldRequest:
    """Checks that the hold names exactly what its scope covers: a subject, a namespace, or a
    namespace and a key."""
    kind = _hold_scope(scope)
    subject_id = _optional_text(subject_id, "subject_id")
    namespace = _optional_text(namespace, "namespace")
    key = _optional_text(key, "key")
    if kind is HoldScope.SUBJECT:
        _subject(subject_id)
        if namespace or key:
            raise InvalidArgument(
                "a subject hold covers every record of the subject: give no namespace or key"
            )
    else:
        if subject_id:
            raise InvalidArgument(f"a {kind.label} hold names a namespace, not a subject; use scope subject")
        if not namespace:
            raise InvalidArgument(f"a {kind.label} hold needs a namespace")
        if kind is HoldScope.NAMESPACE and key:
            raise InvalidArgument(
                "a namespace hold covers the whole namespace: give no key (or use scope key)"
            )
        _check_name(namespace, key if kind is HoldScope.KEY else None)
    return cpb.PlaceLegalHoldRequest(
        scope=int(kind),  # type: ignore[arg-type]
        subject_id=subject_id,
        namespace=namespace,
        key=key,
        reason=_reason(reason, required=True),
    )


def _release_hold_request(hold_id: str, reason: str) -> cpb.ReleaseLegalHoldRequest:
    return cpb.ReleaseLegalHoldRequest(hold_id=_id(hold_id, "hold id"), reason=_reason(reason, required=True))


def _export_request(region: str, subject_id: str, request_id: str) -> spb.ExportSubjectRequest:
    _check_region_name(region)
    return spb.ExportSubjectRequest(
        subject_id=_subject(subject_id), request_id=_optional_text(request_id, "request_id")
    )


def _export_open(req: spb.ExportSubjectRequest) -> Callable[[Any, float], tuple[Any, Any]]:
    # The first message is read inside the call, so that a node that cannot be reached or
    # refuses is retried (or routed around) like any call; once records arrive it cannot be.
    def rpc(stub: Any, timeout: float) -> tuple[Any, spb.ExportSubjectResponse | None]:
        call = stub.ExportSubject(req, timeout=timeout)
        return call, next(call, None)

    return rpc


def _export_open_async(
    req: spb.ExportSubjectRequest,
) -> Callable[[Any, float], Awaitable[tuple[Any, spb.ExportSubjectResponse | None]]]:
    async def rpc(stub: Any, seconds: float) -> tuple[Any, spb.ExportSubjectResponse | None]:
        call = stub.ExportSubject(req, timeout=seconds)
        first = await call.read()
        return call, None if first is grpc.aio.EOF else first

    return rpc


def context_token(context: CausalContext) -> str:
    """A compact text form of a causal context, for passing one through a shell or a form."""
    data = context_to_pb(context).SerializeToString(deterministic=True)
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def context_from_token(token: str) -> CausalContext:
    """Parses context_token's output."""
    try:
        data = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        msg = rpb.CausalContext.FromString(data)
    except (binascii.Error, ValueError, DecodeError):
        raise InvalidArgument(
            "malformed context token: pass the 'context' printed by an earlier get, put or delete"
        ) from None
    return context_from_pb(msg, _LIMITS)


# ---------------------------------------------------------------------------------------------
# Retries and deadlines


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of errors whose `retriable` is True: bounded attempts, exponential backoff with
    full jitter. The call's deadline bounds the total as well.

    Writes are retried too. A write whose first attempt was applied but never acknowledged
    (the connection broke, the deadline passed) is then applied twice: harmless in an lww
    namespace, two equal siblings in a siblings namespace. attempts_max=1 rules that out.
    """

    attempts_max: int = 4
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise InvalidArgument(f"attempts_max is {self.attempts_max}; at least 1 is required")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise InvalidArgument("backoff times must satisfy 0 <= backoff_initial_s <= backoff_max_s")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Pause before retry number `retry` (1-based)."""
        cap = min(self.backoff_max_s, self.backoff_initial_s * self.multiplier ** (retry - 1))
        return rng.uniform(0, cap)


class _Deadline:
    def __init__(self, seconds: float, what: str) -> None:
        self._seconds = seconds
        self._end = time.monotonic() + seconds
        self._what = what

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"{self._what}: the deadline of {self._seconds:g}s passed")
        return left


@dataclass
class _Attempt:
    """What the retry loop knows between attempts of one call."""

    region: str | None
    write: bool
    allowed_regions: tuple[str, ...] | None = None
    placement_retried: bool = False
    retries: int = 0
    refresh: bool = False
    node_id: str | None = None
    avoid: set[str] = field(default_factory=set)

    def next_step(self, error: DomicileError, node: NodeInfo | None, policy: RetryPolicy) -> bool:
        """Updates the plan after `error`; False when the error must be raised."""
        if (
            isinstance(error, PlacementRefused)
            and self.write
            and self.region is None
            and not self.placement_retried
            and error.allowed_regions
        ):
            self.placement_retried = True
            self.allowed_regions = error.allowed_regions
            return True
        if not error.retriable or self.retries + 1 >= policy.attempts_max:
            return False
        self.retries += 1
        if isinstance(error, Unavailable):
            self.refresh = True
            if node is not None:
                self.avoid.add(node.node_id)
        return True

    def backoff_s(self, error: DomicileError, policy: RetryPolicy, rng: random.Random) -> float:
        return 0.0 if isinstance(error, PlacementRefused) else policy.backoff_s(self.retries, rng)


def _call_deadline(default_s: float, override_s: float | None, what: str) -> _Deadline:
    if override_s is not None and not override_s > 0:
        raise InvalidArgument(f"deadline_s is {override_s}; it must be positive")
    return _Deadline(override_s or default_s, what)


def _options(deadline_s: float, retry: RetryPolicy | None, topology_ttl_s: float) -> RetryPolicy:
    if not deadline_s > 0:
        raise InvalidArgument(f"deadline_s is {deadline_s}; it must be positive")
    if topology_ttl_s < 0:
        raise InvalidArgument(f"topology_ttl_s is {topology_ttl_s}; it must be 0 or more")
    return retry or RetryPolicy()


# ---------------------------------------------------------------------------------------------
# Blocking client


class Client:
    """Blocking client. Thread-safe; one instance can serve a whole process."""

    def __init__(
        self,
        coordinator: str = DEFAULT_COORDINATOR,
        *,
        region: str | None = None,
        deadline_s: float = 5.0,
        retry: RetryPolicy | None = None,
        topology_ttl_s: float = 5.0,
        channels_max: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.region = region
        self.deadline_s = deadline_s
        self.retry = _options(deadline_s, retry, topology_ttl_s)
        self._ttl_s = topology_ttl_s
        self._channels_max = max(1, channels_max)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._channels: OrderedDict[str, Any] = OrderedDict()
        self._topology: Topology | None = None
        self._fetched_at = 0.0
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), OrderedDict()
        for channel in channels:
            channel.close()

    def _channel(self, address: str) -> Any:
        with self._lock:
            if self._closed:
                raise FailedPrecondition("the client is closed")
            channel = self._channels.get(address)
            if channel is not None:
                self._channels.move_to_end(address)
                return channel
            channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            self._channels[address] = channel
            evicted = []
            while len(self._channels) > self._channels_max:
                evicted.append(self._channels.popitem(last=False)[1])
        for old in evicted:
            old.close()
        return channel

    # -- topology

    def topology(self) -> Topology:
        """The current topology, fetched from the coordinator now."""
        return self._fetch_topology(_Deadline(self.deadline_s, "GetTopology"))

    def _fetch_topology(self, deadline: _Deadline) -> Topology:
        stub = cgrpc.CoordinatorServiceStub(self._channel(self.coordinator))
        try:
            resp = stub.GetTopology(cpb.GetTopologyRequest(), timeout=deadline.remaining())
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"coordinator at {self.coordinator}") from None
        topology = topology_from_pb(resp.topology)
        with self._lock:
            self._topology, self._fetched_at = topology, time.monotonic()
        return topology

    def _current_topology(self, deadline: _Deadline, force: bool) -> Topology:
        with self._lock:
            cached, age = self._topology, time.monotonic() - self._fetched_at
        if cached is not None and not force and age < self._ttl_s:
            return cached
        try:
            return self._fetch_topology(deadline)
        except DomicileError:
            # Nodes keep serving while the coordinator is away; so does the last topology.
            if cached is None:
                raise
            return cached

    def _coordinator_call(self, what: str, rpc: Callable[[Any, float], R]) -> R:
        """A call to the coordinator, retried like node calls (there is only one coordinator)."""
        deadline = _Deadline(self.deadline_s, what)
        retries = 0
        while True:
            stub = cgrpc.CoordinatorServiceStub(self._channel(self.coordinator))
            try:
                return rpc(stub, deadline.remaining())
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, f"coordinator at {self.coordinator}")
            retries += 1
            if not error.retriable or retries >= self.retry.attempts_max:
                raise error
            pause = self.retry.backoff_s(retries, self._rng)
            if pause >= deadline.remaining():
                raise error
            time.sleep(pause)

    # -- the one call path

    def _call(
        self,
        what: str,
        namespace: str | None,
        region: str | None,
        write: bool,
        rpc: Callable[[Any, float], R],
        node_id: str | None = None,
        deadline_s: float | None = None,
    ) -> tuple[R, NodeInfo]:
        deadline = _call_deadline(self.deadline_s, deadline_s, what)
        plan = _Attempt(region=region, write=write, node_id=node_id)
        while True:
            node: NodeInfo | None = None
            try:
                topology = self._current_topology(deadline, plan.refresh)
                plan.refresh = False
                node = route(
                    topology,
                    namespace,
                    region=plan.region,
                    preferred_region=self.region,
                    allowed_regions=plan.allowed_regions,
                    avoid=plan.avoid,
                    node_id=plan.node_id,
                )
                stub = sgrpc.StorageNodeServiceStub(self._channel(node.address))
                try:
                    return rpc(stub, deadline.remaining()), node
                except grpc.RpcError as exc:
                    raise error_from_rpc(exc, node.describe()) from None
            except DomicileError as error:
                if not plan.next_step(error, node, self.retry):
                    raise
                pause = plan.backoff_s(error, self.retry, self._rng)
                if pause >= deadline.remaining():
                    raise
                time.sleep(pause)

    # -- API

    def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        context: CausalContext | None = None,
        subject_id: str = "",
        subject_jurisdiction: str = "",
        classification: Classification | str | None = None,
        content_type: str = "",
        region: str | None = None,
    ) -> PutResult:
        req = _put_request(
            namespace, key, value, context, subject_id, subject_jurisdiction, classification, content_type
        )
        resp, node = self._call(
            f"put {namespace}/{key}", namespace, region, True, lambda s, t: s.Put(req, timeout=t)
        )
        return _put_result(resp, node)

    def get(self, namespace: str, key: str, *, region: str | None = None) -> GetResult:
        _check_name(namespace, key)
        req = spb.GetRequest(namespace=namespace, key=key)
        resp, node = self._call(
            f"get {namespace}/{key}", namespace, region, False, lambda s, t: s.Get(req, timeout=t)
        )
        return _get_result(resp, node)

    def delete(
        self,
        namespace: str,
        key: str,
        *,
        context: CausalContext | None = None,
        region: str | None = None,
        subject_id: str | None = None,
        subject_jurisdiction: str | None = None,
    ) -> DeleteResult:
        """Writes a tombstone. subject_id / subject_jurisdiction are used only when the node holds
        no version of the record (it then cannot tell where the tombstone belongs)."""
        req = _delete_request(namespace, key, context, subject_id, subject_jurisdiction)
        resp, node = self._call(
            f"delete {namespace}/{key}", namespace, region, True, lambda s, t: s.Delete(req, timeout=t)
        )
        return _delete_result(resp, node)

    def scan(
        self, namespace: str, prefix: str = "", *, region: str | None = None, page_size: int = 100
    ) -> Iterator[ScanItem]:
        """Every live record whose key starts with prefix, in key order, fetched page by page
        (each page is one call with its own deadline). Later pages go to the region that
        answered the first one, because page tokens are only meaningful there."""
        _check_name(namespace)
        _check_page_size(page_size)
        return self._scan(namespace, prefix, region, page_size)

    def _scan(self, namespace: str, prefix: str, region: str | None, page_size: int) -> Iterator[ScanItem]:
        token = ""
        while True:
            req = spb.ScanRequest(
                namespace=namespace, key_prefix=prefix, page_size=page_size, page_token=token
            )
            resp, node = self._call(f"scan {namespace}", namespace, region, False, _scan_rpc(req))
            yield from _scan_items(resp, node)
            token, region = resp.next_page_token, node.region
            if not token:
                return

    def node_status(self, region: str | None = None, *, node_id: str | None = None) -> NodeStatus:
        """Status of the node serving `region`, or of the node `node_id`."""
        if region is None and node_id is None:
            raise InvalidArgument("node_status needs a region or a node_id")
        resp, _ = self._call(
            f"status of {node_id or region}",
            None,
            region,
            False,
            lambda s, t: s.GetNodeStatus(spb.GetNodeStatusRequest(), timeout=t),
            node_id=node_id,
        )
        return _node_status(resp)

    # -- audit and compliance

    def read_audit_log(
        self,
        region: str,
        *,
        after_seq: int = 0,
        limit: int = 0,
        tail: bool = False,
        page_entries: int = AUDIT_PAGE_ENTRIES,
    ) -> tuple[SignedHead | None, Iterator[StoredEntry]]:
        """The audit log of `region` from after_seq (limit 0: to its end), or with tail=True its
        last `limit` entries, and the node's signed head taken before the read.

        The first page is read now (so the head is known); the rest as the iterator is consumed,
        one call of page_entries entries each, all from the node that answered the first page.
        Every read is itself recorded in the log.
        """
        cursor = _AuditCursor(region, after_seq, limit, tail, page_entries)
        head, entries, node = self._audit_page(cursor, None)
        return head, self._audit_rest(cursor, entries, node)

    def _audit_page(
        self, cursor: _AuditCursor, node_id: str | None
    ) -> tuple[SignedHead | None, list[StoredEntry], NodeInfo]:
        region = None if node_id else cursor.region
        msgs, node = self._call(cursor.what(), None, region, False, _audit_rpc(cursor.request()), node_id)
        head, entries = _audit_page(msgs)
        return head, cursor.advance(head, entries), node

    def _audit_rest(
        self, cursor: _AuditCursor, first: list[StoredEntry], node: NodeInfo
    ) -> Iterator[StoredEntry]:
        yield from first
        while not cursor.done:
            _, entries, node = self._audit_page(cursor, node.node_id)
            yield from entries

    def audit_head(self, region: str) -> tuple[SignedHead | None, int]:
        """The last signed head of `region`'s audit log that the coordinator accepted, and when
        it accepted it (ms since the epoch); (None, 0) when the region has exported none yet."""
        _check_region_name(region)
        what = f"audit head of {region}"
        _check_known_region(self._current_topology(_Deadline(self.deadline_s, what), False), region)
        req = cpb.GetAuditHeadRequest(region=region)
        try:
            resp = self._coordinator_call(what, lambda s, t: s.GetAuditHead(req, timeout=t))
        except NotFound:
            return None, 0
        if not resp.HasField("head"):
            return None, 0
        return head_from_pb(resp.head), resp.accepted_unix_ms

    def scan_compliance(
        self,
        region: str,
        violations_max: int = VIOLATIONS_MAX_DEFAULT,
        *,
        deadline_s: float | None = None,
    ) -> ComplianceReport:
        """Has the node of `region` check every record copy it holds against the policy in
        force. The scan walks the whole store: pass a deadline_s that fits its size."""
        _check_region_name(region)
        _check_violations_max(violations_max)
        req = spb.ScanComplianceRequest(violations_max=violations_max)
        resp, node = self._call(
            f"compliance scan of {region}",
            None,
            region,
            False,
            lambda s, t: s.ScanCompliance(req, timeout=t),
            deadline_s=deadline_s,
        )
        return _compliance_report(resp, node)

    # -- data-subject requests and legal holds (coordinator)

    def erase_subject(
        self, subject_id: str, reason: str, subject_jurisdiction: str | None = None
    ) -> SubjectRequest:
        """Opens an erasure request: every region erases the subject's records, except those a
        legal hold or a legal retention obligation keeps (each region's receipt says which).
        The jurisdiction decides the due time (US-CA 45 days, else one month). AlreadyExists
        when an erasure of the subject is open; its message names that request. The call is
        retried on transient errors, so a first attempt whose answer was lost shows up as that
        AlreadyExists too."""
        req = _erase_request(subject_id, reason, subject_jurisdiction)
        what = f"erase subject {subject_id}"
        return _subject_request(
            self._coordinator_call(what, lambda s, t: s.EraseSubject(req, timeout=t)), what
        )

    def subject_request(self, request_id: str) -> SubjectRequest:
        """One request, with its pending regions and every region's erasure receipt."""
        req = cpb.GetSubjectRequestRequest(request_id=_id(request_id, "request id"))
        what = f"subject request {request_id}"
        return _subject_request(
            self._coordinator_call(what, lambda s, t: s.GetSubjectRequest(req, timeout=t)), what
        )

    def subject_requests(
        self, open_only: bool = False, limit: int = SUBJECT_REQUESTS_LIMIT_DEFAULT
    ) -> list[SubjectRequest]:
        """Requests, newest first: at most `limit` (1 to 1000), only open ones with open_only."""
        req = _list_requests(open_only, limit)
        resp = self._coordinator_call(
            "list subject requests", lambda s, t: s.ListSubjectRequests(req, timeout=t)
        )
        return [request_from_pb(r) for r in resp.requests]

    def open_access_request(
        self, subject_id: str, reason: str = "", subject_jurisdiction: str | None = None
    ) -> SubjectRequest:
        """Records an access request (GDPR Art. 15 and 20); read the records with
        export_subject_region and report with complete_access_request."""
        req = _access_request(subject_id, reason, subject_jurisdiction)
        what = f"open access request of subject {subject_id}"
        return _subject_request(
            self._coordinator_call(what, lambda s, t: s.OpenSubjectRequest(req, timeout=t)), what
        )

    def complete_access_request(self, request_id: str, records_exported: int) -> SubjectRequest:
        req = _complete_request(request_id, records_exported)
        what = f"complete access request {request_id}"
        return _subject_request(
            self._coordinator_call(what, lambda s, t: s.CompleteSubjectRequest(req, timeout=t)), what
        )

    def place_hold(
        self,
        scope: HoldScope | str,
        *,
        subject_id: str = "",
        namespace: str = "",
        key: str = "",
        reason: str,
    ) -> LegalHold:
        """Places a legal hold: what it covers is neither expired nor erased until it is
        released. Scope subject needs subject_id; namespace needs namespace; key needs both
        namespace and key."""
        req = _place_hold_request(scope, subject_id, namespace, key, reason)
        what = "place legal hold"
        return _legal_hold(self._coordinator_call(what, lambda s, t: s.PlaceLegalHold(req, timeout=t)), what)

    def release_hold(self, hold_id: str, reason: str) -> LegalHold:
        """Releases a hold; returns it as it was. NotFound for an unknown (or released) id."""
        req = _release_hold_request(hold_id, reason)
        what = f"release legal hold {hold_id}"
        return _legal_hold(
            self._coordinator_call(what, lambda s, t: s.ReleaseLegalHold(req, timeout=t)), what
        )

    def holds(self) -> list[LegalHold]:
        """Legal holds in force."""
        resp = self._coordinator_call(
            "list legal holds", lambda s, t: s.ListLegalHolds(cpb.ListLegalHoldsRequest(), timeout=t)
        )
        return [hold_from_pb(h) for h in resp.holds]

    def export_subject_region(
        self, region: str, subject_id: str, request_id: str = "", *, deadline_s: float | None = None
    ) -> Iterator[ExportedCopy]:
        """Every live record of the subject that `region` holds and may serve, streamed from
        that region's node as it reads them (the node audits the export under request_id).

        The export is one stream: deadline_s (default: the client's) bounds all of it. Opening
        it is retried like any call; a stream that breaks after records arrived is not (it
        cannot resume where it broke): its error is raised from the iterator. Stopping early
        cancels the stream."""
        req = _export_request(region, subject_id, request_id)
        (call, first), node = self._call(
            f"export of subject {subject_id} from {region}",
            None,
            region,
            False,
            _export_open(req),
            deadline_s=deadline_s,
        )
        return self._export_rest(call, first, node)

    def _export_rest(
        self, call: Any, first: spb.ExportSubjectResponse | None, node: NodeInfo
    ) -> Iterator[ExportedCopy]:
        try:
            msg = first
            while msg is not None:
                yield from _exported_copies(msg, node)
                msg = next(call, None)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, node.describe()) from None
        finally:
            call.cancel()


# ---------------------------------------------------------------------------------------------
# Asyncio client


class AsyncClient:
    """The asyncio twin of Client. Create and use it on one event loop."""

    def __init__(
        self,
        coordinator: str = DEFAULT_COORDINATOR,
        *,
        region: str | None = None,
        deadline_s: float = 5.0,
        retry: RetryPolicy | None = None,
        topology_ttl_s: float = 5.0,
        channels_max: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.region = region
        self.deadline_s = deadline_s
        self.retry = _options(deadline_s, retry, topology_ttl_s)
        self._ttl_s = topology_ttl_s
        self._channels_max = max(1, channels_max)
        self._rng = rng or random.Random()
        self._channels: OrderedDict[str, Any] = OrderedDict()
        self._topology: Topology | None = None
        self._fetched_at = 0.0
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = list(self._channels.values()), OrderedDict()
        for channel in channels:
            await channel.close()

    async def _channel(self, address: str) -> Any:
        if self._closed:
            raise FailedPrecondition("the client is closed")
        channel = self._channels.get(address)
        if channel is not None:
            self._channels.move_to_end(address)
            return channel
        channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._channels[address] = channel
        while len(self._channels) > self._channels_max:
            await self._channels.popitem(last=False)[1].close()
        return channel

    async def topology(self) -> Topology:
        """The current topology, fetched from the coordinator now."""
        return await self._fetch_topology(_Deadline(self.deadline_s, "GetTopology"))

    async def _fetch_topology(self, deadline: _Deadline) -> Topology:
        stub = cgrpc.CoordinatorServiceStub(await self._channel(self.coordinator))
        try:
            resp = await stub.GetTopology(cpb.GetTopologyRequest(), timeout=deadline.remaining())
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"coordinator at {self.coordinator}") from None
        self._topology, self._fetched_at = topology_from_pb(resp.topology), time.monotonic()
        return self._topology

    async def _coordinator_call(self, what: str, rpc: Callable[[Any, float], Awaitable[R]]) -> R:
        deadline = _Deadline(self.deadline_s, what)
        retries = 0
        while True:
            stub = cgrpc.CoordinatorServiceStub(await self._channel(self.coordinator))
            try:
                return await rpc(stub, deadline.remaining())
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, f"coordinator at {self.coordinator}")
            retries += 1
            if not error.retriable or retries >= self.retry.attempts_max:
                raise error
            pause = self.retry.backoff_s(retries, self._rng)
            if pause >= deadline.remaining():
                raise error
            await asyncio.sleep(pause)

    async def _current_topology(self, deadline: _Deadline, force: bool) -> Topology:
        cached = self._topology
        if cached is not None and not force and time.monotonic() - self._fetched_at < self._ttl_s:
            return cached
        try:
            return await self._fetch_topology(deadline)
        except DomicileError:
            if cached is None:
                raise
            return cached

    async def _call(
        self,
        what: str,
        namespace: str | None,
        region: str | None,
        write: bool,
        rpc: Callable[[Any, float], Awaitable[R]],
        node_id: str | None = None,
        deadline_s: float | None = None,
    ) -> tuple[R, NodeInfo]:
        deadline = _call_deadline(self.deadline_s, deadline_s, what)
        plan = _Attempt(region=region, write=write, node_id=node_id)
        while True:
            node: NodeInfo | None = None
            try:
                topology = await self._current_topology(deadline, plan.refresh)
                plan.refresh = False
                node = route(
                    topology,
                    namespace,
                    region=plan.region,
                    preferred_region=self.region,
                    allowed_regions=plan.allowed_regions,
                    avoid=plan.avoid,
                    node_id=plan.node_id,
                )
                stub = sgrpc.StorageNodeServiceStub(await self._channel(node.address))
                try:
                    return await rpc(stub, deadline.remaining()), node
                except grpc.RpcError as exc:
                    raise error_from_rpc(exc, node.describe()) from None
            except DomicileError as error:
                if not plan.next_step(error, node, self.retry):
                    raise
                pause = plan.backoff_s(error, self.retry, self._rng)
                if pause >= deadline.remaining():
                    raise
                await asyncio.sleep(pause)

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        context: CausalContext | None = None,
        subject_id: str = "",
        subject_jurisdiction: str = "",
        classification: Classification | str | None = None,
        content_type: str = "",
        region: str | None = None,
    ) -> PutResult:
        req = _put_request(
            namespace, key, value, context, subject_id, subject_jurisdiction, classification, content_type
        )
        resp, node = await self._call(
            f"put {namespace}/{key}", namespace, region, True, lambda s, t: s.Put(req, timeout=t)
        )
        return _put_result(resp, node)

    async def get(self, namespace: str, key: str, *, region: str | None = None) -> GetResult:
        _check_name(namespace, key)
        req = spb.GetRequest(namespace=namespace, key=key)
        resp, node = await self._call(
            f"get {namespace}/{key}", namespace, region, False, lambda s, t: s.Get(req, timeout=t)
        )
        return _get_result(resp, node)

    async def delete(
        self,
        namespace: str,
        key: str,
        *,
        context: CausalContext | None = None,
        region: str | None = None,
        subject_id: str | None = None,
        subject_jurisdiction: str | None = None,
    ) -> DeleteResult:
        req = _delete_request(namespace, key, context, subject_id, subject_jurisdiction)
        resp, node = await self._call(
            f"delete {namespace}/{key}", namespace, region, True, lambda s, t: s.Delete(req, timeout=t)
        )
        return _delete_result(resp, node)

    def scan(
        self, namespace: str, prefix: str = "", *, region: str | None = None, page_size: int = 100
    ) -> AsyncIterator[ScanItem]:
        """As Client.scan: `async for item in client.scan(...)`."""
        _check_name(namespace)
        _check_page_size(page_size)
        return self._scan(namespace, prefix, region, page_size)

    async def _scan(
        self, namespace: str, prefix: str, region: str | None, page_size: int
    ) -> AsyncIterator[ScanItem]:
        token = ""
        while True:
            req = spb.ScanRequest(
                namespace=namespace, key_prefix=prefix, page_size=page_size, page_token=token
            )
            resp, node = await self._call(f"scan {namespace}", namespace, region, False, _scan_rpc(req))
            for item in _scan_items(resp, node):
                yield item
            token, region = resp.next_page_token, node.region
            if not token:
                return

    async def node_status(self, region: str | None = None, *, node_id: str | None = None) -> NodeStatus:
        """Status of the node serving `region`, or of the node `node_id`."""
        if region is None and node_id is None:
            raise InvalidArgument("node_status needs a region or a node_id")
        resp, _ = await self._call(
            f"status of {node_id or region}",
            None,
            region,
            False,
            lambda s, t: s.GetNodeStatus(spb.GetNodeStatusRequest(), timeout=t),
            node_id=node_id,
        )
        return _node_status(resp)

    # -- audit and compliance

    async def read_audit_log(
        self,
        region: str,
        *,
        after_seq: int = 0,
        limit: int = 0,
        tail: bool = False,
        page_entries: int = AUDIT_PAGE_ENTRIES,
    ) -> tuple[SignedHead | None, AsyncIterator[StoredEntry]]:
        """As Client.read_audit_log: `async for entry in entries`."""
        cursor = _AuditCursor(region, after_seq, limit, tail, page_entries)
        head, entries, node = await self._audit_page(cursor, None)
        return head, self._audit_rest(cursor, entries, node)

    async def _audit_page(
        self, cursor: _AuditCursor, node_id: str | None
    ) -> tuple[SignedHead | None, list[StoredEntry], NodeInfo]:
        region = None if node_id else cursor.region
        rpc = _audit_rpc_async(cursor.request())
        msgs, node = await self._call(cursor.what(), None, region, False, rpc, node_id)
        head, entries = _audit_page(msgs)
        return head, cursor.advance(head, entries), node

    async def _audit_rest(
        self, cursor: _AuditCursor, first: list[StoredEntry], node: NodeInfo
    ) -> AsyncIterator[StoredEntry]:
        for entry in first:
            yield entry
        while not cursor.done:
            _, entries, node = await self._audit_page(cursor, node.node_id)
            for entry in entries:
                yield entry

    async def audit_head(self, region: str) -> tuple[SignedHead | None, int]:
        """As Client.audit_head."""
        _check_region_name(region)
        what = f"audit head of {region}"
        topology = await self._current_topology(_Deadline(self.deadline_s, what), False)
        _check_known_region(topology, region)
        req = cpb.GetAuditHeadRequest(region=region)
        try:
            resp = await self._coordinator_call(what, lambda s, t: s.GetAuditHead(req, timeout=t))
        except NotFound:
            return None, 0
        if not resp.HasField("head"):
            return None, 0
        return head_from_pb(resp.head), resp.accepted_unix_ms

    async def scan_compliance(
        self,
        region: str,
        violations_max: int = VIOLATIONS_MAX_DEFAULT,
        *,
        deadline_s: float | None = None,
    ) -> ComplianceReport:
        """As Client.scan_compliance."""
        _check_region_name(region)
        _check_violations_max(violations_max)
        req = spb.ScanComplianceRequest(violations_max=violations_max)
        resp, node = await self._call(
            f"compliance scan of {region}",
            None,
            region,
            False,
            lambda s, t: s.ScanCompliance(req, timeout=t),
            deadline_s=deadline_s,
        )
        return _compliance_report(resp, node)

    # -- data-subject requests and legal holds (coordinator)

    async def erase_subject(
        self, subject_id: str, reason: str, subject_jurisdiction: str | None = None
    ) -> SubjectRequest:
        """As Client.erase_subject."""
        req = _erase_request(subject_id, reason, subject_jurisdiction)
        what = f"erase subject {subject_id}"
        resp = await self._coordinator_call(what, lambda s, t: s.EraseSubject(req, timeout=t))
        return _subject_request(resp, what)

    async def subject_request(self, request_id: str) -> SubjectRequest:
        """As Client.subject_request."""
        req = cpb.GetSubjectRequestRequest(request_id=_id(request_id, "request id"))
        what = f"subject request {request_id}"
        resp = await self._coordinator_call(what, lambda s, t: s.GetSubjectRequest(req, timeout=t))
        return _subject_request(resp, what)

    async def subject_requests(
        self, open_only: bool = False, limit: int = SUBJECT_REQUESTS_LIMIT_DEFAULT
    ) -> list[SubjectRequest]:
        """As Client.subject_requests."""
        req = _list_requests(open_only, limit)
        resp = await self._coordinator_call(
            "list subject requests", lambda s, t: s.ListSubjectRequests(req, timeout=t)
        )
        return [request_from_pb(r) for r in resp.requests]

    async def open_access_request(
        self, subject_id: str, reason: str = "", subject_jurisdiction: str | None = None
    ) -> SubjectRequest:
        """As Client.open_access_request."""
        req = _access_request(subject_id, reason, subject_jurisdiction)
        what = f"open access request of subject {subject_id}"
        resp = await self._coordinator_call(what, lambda s, t: s.OpenSubjectRequest(req, timeout=t))
        return _subject_request(resp, what)

    async def complete_access_request(self, request_id: str, records_exported: int) -> SubjectRequest:
        """As Client.complete_access_request."""
        req = _complete_request(request_id, records_exported)
        what = f"complete access request {request_id}"
        resp = await self._coordinator_call(what, lambda s, t: s.CompleteSubjectRequest(req, timeout=t))
        return _subject_request(resp, what)

    async def place_hold(
        self,
        scope: HoldScope | str,
        *,
        subject_id: str = "",
        namespace: str = "",
        key: str = "",
        reason: str,
    ) -> LegalHold:
        """As Client.place_hold."""
        req = _place_hold_request(scope, subject_id, namespace, key, reason)
        what = "place legal hold"
        return _legal_hold(
            await self._coordinator_call(what, lambda s, t: s.PlaceLegalHold(req, timeout=t)), what
        )

    async def release_hold(self, hold_id: str, reason: str) -> LegalHold:
        """As Client.release_hold."""
        req = _release_hold_request(hold_id, reason)
        what = f"release legal hold {hold_id}"
        return _legal_hold(
            await self._coordinator_call(what, lambda s, t: s.ReleaseLegalHold(req, timeout=t)), what
        )

    async def holds(self) -> list[LegalHold]:
        """As Client.holds."""
        resp = await self._coordinator_call(
            "list legal holds", lambda s, t: s.ListLegalHolds(cpb.ListLegalHoldsRequest(), timeout=t)
        )
        return [hold_from_pb(h) for h in resp.holds]

    async def export_subject_region(
        self, region: str, subject_id: str, request_id: str = "", *, deadline_s: float | None = None
    ) -> AsyncIterator[ExportedCopy]:
        """As Client.export_subject_region: `async for copy in await client.export_subject_region(...)`."""
        req = _export_request(region, subject_id, request_id)
        (call, first), node = await self._call(
            f"export of subject {subject_id} from {region}",
            None,
            region,
            False,
            _export_open_async(req),
            deadline_s=deadline_s,
        )
        return self._export_rest(call, first, node)

    async def _export_rest(
        self, call: Any, first: spb.ExportSubjectResponse | None, node: NodeInfo
    ) -> AsyncIterator[ExportedCopy]:
        try:
            msg = first
            while msg is not None:
                for copy in _exported_copies(msg, node):
                    yield copy
                nxt = await call.read()
                msg = None if nxt is grpc.aio.EOF else nxt
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, node.describe()) from None
        finally:
            call.cancel()
