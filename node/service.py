"""The node's storage operations in domain terms: checks, policy, commit, read.
The gRPC servicer (node/api/storage.py) only translates to and from this."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass

from domicile import errors
from domicile.causality import CausalContext, KeyState, Version, visible
from domicile.cluster import NamespaceSpec
from domicile.model import (
    Classification,
    ConflictMode,
    Limits,
    check_jurisdiction,
    check_key,
    check_namespace_name,
    check_value,
)
from domicile.policy import Action, RecordFacts
from node.engine.base import Committed, LocalWrite, StorageEngine
from node.engine.group_commit import GroupCommitter
from node.metrics import NodeMetrics
from node.topology_view import TopologyView


@dataclass(frozen=True)
class PutCommand:
    namespace: str
    key: str
    value: bytes
    content_type: str = ""
    context: CausalContext | None = None
    subject_id: str = ""
    subject_jurisdiction: str = ""
    classification: Classification = Classification.UNSPECIFIED


@dataclass(frozen=True)
class ReadResult:
    found: bool
    versions: tuple[Version, ...]
    context: CausalContext


@dataclass(frozen=True)
class ScanPage:
    items: list[tuple[str, ReadResult]]
    next_page_token: str


class StorageService:
    def __init__(
        self,
        *,
        node_id: str,
        region: str,
        engine: StorageEngine,
        committer: GroupCommitter,
        view: TopologyView,
        limits: Limits,
        metrics: NodeMetrics,
        on_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self.node_id = node_id
        self.region = region
        self.engine = engine
        self.committer = committer
        self.view = view
        self.limits = limits
        self.metrics = metrics
        # Wakes the replication senders: the change log has grown.
        self.on_committed = on_committed
        self.started = time.monotonic()
        self.conflicts_total = 0

    # -- checks -------------------------------------------------------------------------------

    def _namespace(self, name: str) -> NamespaceSpec:
        check_namespace_name(name)
        return self.view.topology.cluster.namespace(name)

    def _classification(self, spec: NamespaceSpec, requested: Classification) -> Classification:
        if requested is Classification.UNSPECIFIED:
            return spec.classification
        if requested.strictness < spec.classification.strictness:
            raise errors.InvalidArgument(
                f"classification {requested.label} is looser than the namespace default "
                f"{spec.classification.label} of {spec.name}; a record may be stricter, never looser"
            )
        return requested

    def _check_placement(self, spec: NamespaceSpec, facts: RecordFacts) -> None:
        decision = self.view.policy.decide(facts, self.region, Action.STORE)
        if not decision.allowed:
            self.metrics.placement_refused.labels(spec.name, decision.rule).inc()
            raise errors.PlacementRefused(
                f"region {self.region} may not hold this record: {decision.reason}",
                decision.allowed_regions,
                decision.rule,
            )

    # -- operations ---------------------------------------------------------------------------

    async def put(self, cmd: PutCommand) -> Committed:
        spec = self._namespace(cmd.namespace)
        check_key(cmd.key, self.limits)
        check_value(cmd.value, self.limits)
        if len(cmd.content_type.encode()) > self.limits.content_type_bytes_max:
            raise errors.InvalidArgument(
                f"content type is longer than {self.limits.content_type_bytes_max} bytes"
            )
        if len(cmd.subject_id.encode()) > self.limits.subject_id_bytes_max:
            raise errors.InvalidArgument(
                f"subject id is longer than {self.limits.subject_id_bytes_max} bytes"
            )
        check_jurisdiction(cmd.subject_jurisdiction)
        classification = self._classification(spec, cmd.classification)
        self._check_placement(
            spec, RecordFacts(spec.name, classification, cmd.subject_id, cmd.subject_jurisdiction)
        )
        # In lww mode a write always supersedes everything this node holds: the winner is
        # decided by HLC, and keeping losers would only grow the state.
        supersedes = (
            None if spec.conflict_mode is ConflictMode.LWW else (cmd.context or CausalContext.empty())
        )
        committed = await self.committer.submit(
            LocalWrite(
                namespace=spec.name,
                key=cmd.key,
                value=cmd.value,
                content_type=cmd.content_type,
                supersedes=supersedes,
                subject_id=cmd.subject_id,
                subject_jurisdiction=cmd.subject_jurisdiction,
                classification=classification,
            )
        )
        self.on_committed()
        self._count_conflict(spec, committed.conflict)
        return committed

    async def delete(self, namespace: str, key: str, context: CausalContext | None) -> Committed:
        spec = self._namespace(namespace)
        check_key(key, self.limits)
        supersedes = None if spec.conflict_mode is ConflictMode.LWW else context
        committed = await self.committer.submit(
            LocalWrite(
                namespace=spec.name,
                key=key,
                tombstone=True,
                supersedes=supersedes,
                classification=spec.classification,
            )
        )
        self.on_committed()
        self._count_conflict(spec, committed.conflict and committed.state.has_live())
        return committed

    def _count_conflict(self, spec: NamespaceSpec, conflict: bool) -> None:
        if conflict:
            self.conflicts_total += 1
            self.metrics.conflicts.labels(spec.name, spec.conflict_mode.name.lower()).inc()

    def _read_result(self, spec: NamespaceSpec, state: KeyState | None) -> ReadResult:
        versions = visible(state, spec.conflict_mode)
        for v in versions:
            decision = self.view.policy.decide(
                RecordFacts(spec.name, v.classification, v.subject_id, v.subject_jurisdiction),
                self.region,
                Action.READ,
            )
            if not decision.allowed:
                raise errors.PlacementRefused(
                    f"region {self.region} may not serve this record: {decision.reason}",
                    decision.allowed_regions,
                    decision.rule,
                )
        context = state.context if state else CausalContext.empty()
        return ReadResult(bool(versions), versions, context)

    def get(self, namespace: str, key: str) -> ReadResult:
        spec = self._namespace(namespace)
        check_key(key, self.limits)
        return self._read_result(spec, self.engine.get(spec.name, key))

    def scan(self, namespace: str, prefix: str, page_size: int, page_token: str) -> ScanPage:
        spec = self._namespace(namespace)
        if page_size == 0:
            page_size = self.limits.scan_page_size_default
        if page_size > self.limits.scan_page_size_max:
            raise errors.InvalidArgument(
                f"page size {page_size} is too large; use 1 to {self.limits.scan_page_size_max}"
            )
        start_after = decode_page_token(page_token) if page_token else ""
        if start_after and not start_after.startswith(prefix):
            raise errors.InvalidArgument("page token does not belong to this prefix; start without a token")
        rows = self.engine.scan(spec.name, prefix, start_after, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        items = []
        for key, state in rows:
            result = self._read_result(spec, state)
            if result.found:
                items.append((key, result))
        token = encode_page_token(rows[-1][0]) if more and rows else ""
        return ScanPage(items, token)


def encode_page_token(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode("utf-8", "surrogatepass")).decode("ascii")


def decode_page_token(token: str) -> str:
    try:
        key = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        key = ""
    if not key:
        raise errors.InvalidArgument(
            "invalid page token: pass the next_page_token of the previous page unchanged"
        )
    return key
