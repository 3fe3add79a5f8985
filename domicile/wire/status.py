"""A node's status and compliance scan on the wire: storage node messages <-> domicile.results."""

from __future__ import annotations

from domicile.model import Classification
from domicile.results import (
    BackfillState,
    ComplianceReport,
    ComplianceViolation,
    LinkState,
    NamespaceQuality,
    NamespaceStats,
    NodeStatus,
    RemediationReceipt,
)
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.enums import enum_or


def link_state_from_pb(msg: spb.LinkStatus) -> LinkState:
    return LinkState(
        source_node_id=msg.source_node_id,
        target_node_id=msg.target_node_id,
        acked_lsn=msg.acked_lsn,
        backlog=msg.backlog,
        connected=msg.connected,
        lag_ms_p99=msg.lag_ms_p99,
        applied_total=msg.applied_total,
    )


def node_status_from_pb(msg: spb.GetNodeStatusResponse) -> NodeStatus:
    return NodeStatus(
        node_id=msg.node_id,
        region=msg.region,
        topology_revision=msg.topology_revision,
        records_stored=msg.records_stored,
        last_lsn=msg.last_lsn,
        outbound=tuple(link_state_from_pb(m) for m in msg.outbound),
        inbound=tuple(link_state_from_pb(m) for m in msg.inbound),
        conflicts_total=msg.conflicts_total,
        tombstones_stored=msg.tombstones_stored,
        policy_version=msg.policy_version,
        uptime_seconds=msg.uptime_seconds,
        audit_entries=msg.audit_entries,
        audit_exported_size=msg.audit_exported_size,
        compliance_violations=msg.compliance_violations,
        namespace_stats=tuple(
            NamespaceStats(
                m.namespace,
                enum_or(Classification, m.classification, Classification.UNSPECIFIED),
                m.records,
                m.candidate_invalid,
            )
            for m in msg.namespace_stats
        ),
        namespace_quality=tuple(
            NamespaceQuality(
                m.namespace, m.validated, tuple(sorted(m.refused_by_rule.items())), m.quality_score
            )
            for m in msg.namespace_quality
        ),
        authz_policy_version=msg.authz_policy_version,
        backfill=_backfill_from_pb(msg.backfill),
    )


def _backfill_from_pb(msg: spb.BackfillStatus) -> BackfillState | None:
    if msg.state in ("", "idle"):
        return None
    return BackfillState(
        state=msg.state,
        topology_revision=msg.topology_revision,
        policy_version=msg.policy_version,
        pairs_total=msg.pairs_total,
        pairs_done=msg.pairs_done,
        keys_pulled=msg.keys_pulled,
        rate_keys_per_second=msg.rate_keys_per_second,
    )


def compliance_report_from_pb(msg: spb.ScanComplianceResponse, node_id: str, region: str) -> ComplianceReport:
    """`node_id` and `region` are those of the node that scanned: older nodes leave the region out."""
    return ComplianceReport(
        region=msg.region or region,
        node_id=node_id,
        policy_version=msg.policy_version,
        versions_checked=msg.versions_checked,
        violations_total=msg.violations_total,
        violations=tuple(violation_from_pb(v, region) for v in msg.violations),
        violations_held=msg.violations_held,
    )


def violation_to_pb(v: ComplianceViolation, out: spb.ComplianceViolation) -> spb.ComplianceViolation:
    out.namespace = v.namespace
    out.key = v.key
    out.region = v.region
    out.origin_region = v.origin_region
    out.classification = int(v.classification)  # type: ignore[assignment]
    out.subject_jurisdiction = v.subject_jurisdiction
    out.rule = v.rule
    out.reason = v.reason
    out.allowed_regions.extend(v.allowed_regions)
    out.hold_reason = v.hold_reason
    return out


def violation_from_pb(msg: spb.ComplianceViolation, region: str) -> ComplianceViolation:
    """`region` is that of the node that scanned: older nodes leave the field empty."""
    return ComplianceViolation(
        namespace=msg.namespace,
        key=msg.key,
        region=msg.region or region,
        origin_region=msg.origin_region,
        classification=enum_or(Classification, msg.classification, Classification.UNSPECIFIED),
        subject_jurisdiction=msg.subject_jurisdiction,
        rule=msg.rule,
        reason=msg.reason,
        allowed_regions=tuple(msg.allowed_regions),
        hold_reason=msg.hold_reason,
    )


def receipt_from_pb(msg: spb.RemediateComplianceResponse, region: str) -> RemediationReceipt:
    return RemediationReceipt(
        request_id=msg.request_id,
        region=msg.region or region,
        node_id=msg.node_id,
        policy_version=msg.policy_version,
        copies_removed=msg.copies_removed,
        versions_removed=msg.versions_removed,
        kept_last_copies=msg.kept_last_copies,
        removed=tuple(violation_from_pb(v, region) for v in msg.removed),
        receipt_audit_seq=msg.receipt_audit_seq,
        violations_after=msg.violations_after,
        kept_held=msg.kept_held,
        held=tuple(violation_from_pb(v, region) for v in msg.held),
    )
