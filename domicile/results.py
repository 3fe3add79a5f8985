"""What the SDK's calls return: plain values built from domicile.causality types."""

from __future__ import annotations

from dataclasses import dataclass

from domicile.causality import CausalContext, Version
from domicile.errors import FailedPrecondition
from domicile.model import Classification


@dataclass(frozen=True)
class ReadVersion(Version):
    """A version as a read returned it. `redacted_fields` names the fields the residency policy
    removed from this copy (e.g. value and subject_id); empty when the copy is complete."""

    redacted_fields: tuple[str, ...] = ()

    @property
    def redacted(self) -> bool:
        return bool(self.redacted_fields)


# `context` is the causal context in the clear, to look at; `context_token` is the same context
# as the node's opaque, authenticated token, to pass to a later put or delete of the same key.


@dataclass(frozen=True)
class PutResult:
    version: Version
    context: CausalContext
    lsn: int
    region: str
    context_token: bytes = b""


@dataclass(frozen=True)
class BatchRecord:
    """One record of a put_batch call: the arguments of a put of it alone."""

    key: str
    value: bytes
    subject_id: str = ""
    subject_jurisdiction: str = ""
    classification: Classification | str | None = None
    content_type: str = ""
    context_token: bytes | None = None
    # Every retry of the batch resends each record's id, so that the cluster writes it once.
    request_id: str | None = None


@dataclass(frozen=True)
class GetResult:
    found: bool
    versions: tuple[ReadVersion, ...]
    context: CausalContext
    region: str
    context_token: bytes = b""

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
                "resolved value with context_token=result.context_token"
            )
        return self.versions[0].value


@dataclass(frozen=True)
class DeleteResult:
    existed: bool
    version: Version
    context: CausalContext
    lsn: int
    region: str
    context_token: bytes = b""


@dataclass(frozen=True)
class ScanItem:
    key: str
    versions: tuple[ReadVersion, ...]
    context: CausalContext
    context_token: bytes = b""


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
    # Per namespace and classification, when asked for (node_status(namespace_stats=True)).
    namespace_stats: tuple[NamespaceStats, ...] = ()
    # Per namespace with a schema or quality fields, since the node started.
    namespace_quality: tuple[NamespaceQuality, ...] = ()
    # The authorization policy set the node enforces ("" from an insecure node or an older one).
    authz_policy_version: str = ""
    # The backfill after the last policy change that let the region hold more (None: none yet).
    backfill: BackfillState | None = None


@dataclass(frozen=True)
class BackfillState:
    state: str  # running or done
    topology_revision: int
    policy_version: str
    pairs_total: int
    pairs_done: int
    keys_pulled: int
    rate_keys_per_second: float


@dataclass(frozen=True)
class NamespaceStats:
    namespace: str
    classification: Classification
    records: int
    # Stored live values that fail the candidate schema asked for (0 without one).
    candidate_invalid: int = 0


@dataclass(frozen=True)
class NamespaceQuality:
    namespace: str
    validated: int
    refused_by_rule: tuple[tuple[str, int], ...]
    quality_score: float


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
    # The legal hold that covers the copy, for people; "" when none does. A held copy is still
    # a violation, but no remediation removes it until the hold is released.
    hold_reason: str = ""

    @property
    def held(self) -> bool:
        return bool(self.hold_reason)


@dataclass(frozen=True)
class RemediationReceipt:
    """What one region's node removed for a remediation: the copies the policy in force does
    not allow there, and only there (nothing replicates the removal). `removed` lists at most
    the removed_max asked for; `copies_removed` counts them all. `held` lists, the same way,
    the forbidden copies a legal hold kept (each naming its hold); `kept_held` counts them."""

    request_id: str
    region: str
    node_id: str
    policy_version: str
    copies_removed: int
    versions_removed: int
    kept_last_copies: int
    removed: tuple[ComplianceViolation, ...]
    receipt_audit_seq: int
    violations_after: int
    kept_held: int = 0
    held: tuple[ComplianceViolation, ...] = ()


@dataclass(frozen=True)
class ComplianceReport:
    """What one region's compliance scan found. `violations` lists at most the violations_max
    asked for; `violations_total` counts them all, `violations_held` those of them a legal hold
    covers (a remediation keeps them)."""

    region: str
    node_id: str
    policy_version: str
    versions_checked: int
    violations_total: int
    violations: tuple[ComplianceViolation, ...]
    violations_held: int = 0

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


@dataclass(frozen=True)
class NamespaceConsistency:
    """How two replicas of a namespace agree: `keys` is what either holds that both may hold,
    `divergent` how many of those differ (or only one holds); `divergent_keys` lists the first."""

    namespace: str
    keys: int
    divergent: int
    divergent_keys: tuple[str, ...]
    # Keys the comparing node pulled from its peer (a repair only).
    repaired: int = 0

    @property
    def agreement(self) -> float:
        return 1.0 if self.keys == 0 else (self.keys - self.divergent) / self.keys


@dataclass(frozen=True)
class PairConsistency:
    """The consistency check of one pair of nodes, per namespace they both hold."""

    node_id: str
    peer_node_id: str
    namespaces: tuple[NamespaceConsistency, ...]
