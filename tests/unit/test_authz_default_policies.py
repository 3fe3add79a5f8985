"""The default policy set, table-driven: every role against every action, purpose limitation,
namespace ownership, principals without roles or of the wrong kind, and refusal messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from domicile.authz import (
    ACTIONS,
    Authorizer,
    ClusterResource,
    NamespaceResource,
    Principal,
    PrincipalKind,
    RegionResource,
    RequestContext,
    ResourceKind,
    Role,
)
from domicile.cluster import load_cluster
from domicile.errors import InvalidArgument, PermissionDenied
from domicile.identity.principal import Role as CertificateRole

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = load_cluster(ROOT / "deploy" / "cluster.yaml")

RECORD_RPCS = {"storage.Put", "storage.Get", "storage.Delete", "storage.Scan"}
# What each role may call (record RPCs: on a namespace it owns, for one of its purposes).
ALLOWED = {
    "app": RECORD_RPCS | {"storage.PutBatch", "storage.GetNodeStatus", "coordinator.GetTopology"},
    "dpo": {
        "storage.ExportSubject",
        "storage.RemediateCompliance",
        "coordinator.EraseSubject",
        "coordinator.OpenSubjectRequest",
        "coordinator.CompleteSubjectRequest",
        "coordinator.GetSubjectRequest",
        "coordinator.ListSubjectRequests",
        "coordinator.PlaceLegalHold",
        "coordinator.ReleaseLegalHold",
        "coordinator.ListLegalHolds",
        "coordinator.GetTopology",
    },
    "auditor": {
        "storage.ReadAuditLog",
        "coordinator.GetAuditHead",
        "storage.ScanCompliance",
        "storage.GetNodeStatus",
        "storage.CheckConsistency",
        "coordinator.GetTopology",
    },
    # Prometheus: /metrics and health only, no RPC (not even the topology).
    "monitor": set(),
    "operator": {
        "coordinator.GetTopology",
        "coordinator.WatchTopology",
        "coordinator.RemoveNode",
        "storage.GetNodeStatus",
        "storage.CheckConsistency",
    },
    "node": {
        "replication.Replicate",
        "replication.EntropyDigests",
        "replication.EntropyKeys",
        "replication.EntropyStates",
        "coordinator.RegisterNode",
        "coordinator.Heartbeat",
        "coordinator.WatchTopology",
        "coordinator.ExportAuditHead",
        "coordinator.ReportErasure",
        "coordinator.WatchSubjectOrders",
        "coordinator.ListErasedSubjects",
    },
}


@pytest.fixture(scope="module")
def authz() -> Authorizer:
    return Authorizer.default()


def principal(role: str, name: str = "trading") -> Principal:
    kind = PrincipalKind.NODE if role == "node" else PrincipalKind.CLIENT
    return Principal(f"spiffe://domicile/{kind.value}/{name}", kind, frozenset({Role(role)}))


def resource_for(action: str, namespace: str = "trades", region: str = "eu-west-1"):
    kind = ACTIONS[action].resource_kind
    if kind is ResourceKind.NAMESPACE:
        return NamespaceResource.in_cluster(CLUSTER, namespace, region)
    if kind is ResourceKind.REGION:
        return RegionResource(region)
    return ClusterResource()


TRADE = RequestContext("trade_execution")


def test_regression_every_role_a_certificate_carries_is_a_role_the_policies_know():
    """The gate maps a certificate's roles to the policies' by value; one missing there failed
    every call of its holder with INTERNAL."""
    assert {r.value for r in CertificateRole} <= {r.value for r in Role}


def test_the_table_covers_every_role_and_each_action_is_allowed_to_some_role():
    assert set(ALLOWED) == {r.value for r in Role}
    assert set().union(*ALLOWED.values()) == set(ACTIONS)


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_every_role_against_every_action(authz, role, action):
    decision = authz.authorize(principal(role), action, resource_for(action), TRADE)
    expected = action in ALLOWED[role]
    assert decision.allowed is expected, decision.reason
    if expected:
        assert decision.policy_ids and decision.reason == f"allowed by {', '.join(decision.policy_ids)}"
        return
    assert f"with roles [{role}] may not call {action}" in decision.reason
    allowed_for = [r.value for r in Role if action in ALLOWED[r.value]]
    assert decision.reason.endswith(f"allowed for roles: {', '.join(allowed_for)}"), decision.reason


def test_the_refusal_names_the_action_and_the_roles_that_would_allow_it(authz):
    with pytest.raises(PermissionDenied) as exc:
        authz.require(principal("app"), "storage.ExportSubject", RegionResource("eu-west-1"))
    assert exc.value.message == (
        "principal spiffe://domicile/client/trading with roles [app] may not call storage.ExportSubject "
        "at region eu-west-1; allowed for roles: dpo"
    )
    assert exc.value.retriable is False


def test_require_returns_the_decision_when_allowed(authz):
    decision = authz.require(principal("dpo"), "coordinator.EraseSubject", ClusterResource())
    assert decision.policy_ids == ("dpo-subject-requests",)


# -- apps and their namespaces


@pytest.mark.parametrize("action", sorted(RECORD_RPCS))
def test_an_app_may_not_use_records_of_a_namespace_it_does_not_own(authz, action):
    decision = authz.authorize(principal("app"), action, resource_for(action, "customers"), TRADE)
    assert not decision.allowed
    assert decision.policy_ids == ()
    assert "namespace customers is owned by 'customer-platform'" in decision.reason


def test_the_owner_is_matched_by_the_principal_name_from_its_spiffe_id(authz):
    owner = Principal.of("spiffe://domicile/client/customer-platform", ["app"])
    assert owner.name == "customer-platform" and owner.kind is PrincipalKind.CLIENT
    decision = authz.authorize(owner, "storage.Put", resource_for("storage.Put", "customers"), TRADE)
    assert decision.allowed and decision.policy_ids == ("app-records-of-owned-namespaces",)


@pytest.mark.parametrize(
    ("action", "allowed"), [("storage.Get", True), ("storage.Scan", True), ("storage.Put", False)]
)
def test_any_app_reads_public_reference_data_but_only_its_owner_writes_it(authz, action, allowed):
    decision = authz.authorize(principal("app"), action, resource_for(action, "instruments"))
    assert decision.allowed is allowed
    if allowed:
        assert decision.policy_ids == ("app-reads-public-namespaces",)


# -- purpose limitation


@pytest.mark.parametrize("action", sorted(RECORD_RPCS))
@pytest.mark.parametrize(
    ("purpose", "allowed"),
    [("trade_execution", True), ("settlement", True), ("marketing", False), ("", False)],
)
def test_a_namespace_with_purposes_refuses_any_other_purpose(authz, action, purpose, allowed):
    decision = authz.authorize(principal("app"), action, resource_for(action), RequestContext(purpose))
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert decision.policy_ids == ("purpose-limitation",)
        declared = repr(purpose) if purpose else "none"
        assert f"declared purpose: {declared}; namespace trades may be used for: trade_execution" in (
            decision.reason
        )


@pytest.mark.parametrize("purpose", ["marketing", "", "trade_execution"])
def test_a_namespace_without_purposes_does_not_limit_them(authz, purpose):
    owner = principal("app", "market-data")
    decision = authz.authorize(
        owner, "storage.Put", resource_for("storage.Put", "instruments"), RequestContext(purpose)
    )
    assert decision.allowed and decision.policy_ids == ("app-records-of-owned-namespaces",)


def test_purpose_limitation_also_applies_when_the_owner_is_not_in_the_config():
    resource = NamespaceResource("scratch", "eu-west-1", "internal", owner="trading", purposes=("analytics",))
    authz = Authorizer.default()
    assert authz.authorize(principal("app"), "storage.Get", resource, RequestContext("analytics")).allowed
    assert not authz.authorize(principal("app"), "storage.Get", resource, TRADE).allowed


def test_a_malformed_purpose_is_invalid():
    with pytest.raises(InvalidArgument):
        RequestContext("Trade Execution")


# -- principals


def test_a_client_given_the_node_role_may_not_replicate(authz):
    impostor = Principal("spiffe://domicile/client/x", PrincipalKind.CLIENT, frozenset({Role.NODE}))
    decision = authz.authorize(impostor, "replication.Replicate", RegionResource("eu-west-1"))
    assert not decision.allowed
    assert decision.reason.endswith("allowed for roles: node")


def test_a_principal_without_roles_may_call_nothing(authz):
    nobody = Principal("token-subject-42", PrincipalKind.CLIENT, frozenset())
    for action in ACTIONS:
        decision = authz.authorize(nobody, action, resource_for(action), TRADE)
        assert not decision.allowed, action
        assert "with roles [] may not call" in decision.reason


def test_the_coordinator_has_no_role_in_the_default_set(authz):
    coordinator = Principal.of("spiffe://domicile/coordinator/main", [])
    assert coordinator.kind is PrincipalKind.COORDINATOR
    assert not authz.authorize(coordinator, "replication.Replicate", RegionResource("eu-west-1")).allowed


def test_roles_accumulate(authz):
    both = Principal.of("spiffe://domicile/client/trading", ["app", "auditor"])
    assert authz.authorize(both, "storage.Put", resource_for("storage.Put"), TRADE).allowed
    assert authz.authorize(both, "storage.ReadAuditLog", RegionResource("eu-west-1")).allowed
    assert not authz.authorize(both, "storage.ExportSubject", RegionResource("eu-west-1")).allowed


@pytest.mark.parametrize("role", ["admin", "", "superuser"])
def test_an_unknown_role_is_invalid_and_names_the_roles(role):
    with pytest.raises(InvalidArgument) as exc:
        Principal.of("spiffe://domicile/client/trading", [role])
    assert "roles: app, dpo, auditor, operator, monitor, node" in exc.value.message


def test_an_unknown_kind_in_a_spiffe_id_is_invalid():
    with pytest.raises(InvalidArgument):
        Principal.of("spiffe://domicile/robot/r2", ["app"])


def test_a_resource_of_the_wrong_kind_is_invalid(authz):
    with pytest.raises(InvalidArgument) as exc:
        authz.authorize(principal("app"), "storage.Put", RegionResource("eu-west-1"))
    assert "storage.Put acts on a namespace" in exc.value.message


def test_decisions_are_cached_per_principal_and_resource_without_changing_them(authz):
    p, r = principal("app"), resource_for("storage.Get")
    first = authz.authorize(p, "storage.Get", r, TRADE)
    assert authz.authorize(p, "storage.Get", r, TRADE) == first
    assert not authz.authorize(p, "storage.Get", r, RequestContext("marketing")).allowed
