"""SPIFFE IDs, principals and expected peers."""

from __future__ import annotations

import pytest

from domicile.errors import InvalidArgument, PermissionDenied, Unauthenticated
from domicile.identity import spiffe
from domicile.identity.principal import ExpectedPeer, PrincipalKind, Role, parse_roles


def test_uris_of_each_kind_round_trip():
    node = spiffe.parse_uri(spiffe.node_id_uri("prod", "eu-west-1", "eu-west-1a"), "prod")
    assert (node.kind, node.region, node.node_id, node.name) == (
        PrincipalKind.NODE,
        "eu-west-1",
        "eu-west-1a",
        None,
    )
    assert str(node) == "spiffe://prod/region/eu-west-1/node/eu-west-1a"
    coordinator = spiffe.parse_uri(spiffe.coordinator_uri("prod"), "prod")
    assert coordinator.kind is PrincipalKind.COORDINATOR
    client = spiffe.parse_uri(spiffe.client_uri("prod", "trading-app"), "prod")
    assert (client.kind, client.name, client.roles) == (PrincipalKind.CLIENT, "trading-app", frozenset())


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("https://prod/coordinator", "not a SPIFFE ID"),
        ("spiffe://staging/coordinator", "belongs to cluster 'staging', not to 'prod'"),
        ("spiffe://prod/region/eu-west-1/node", "malformed path"),
        ("spiffe://prod/region/EU/node/n1", "malformed path"),
        ("spiffe://prod/client/", "malformed path"),
        ("spiffe://prod/client/a/b", "malformed path"),
        ("spiffe://prod/coordinator/x", "malformed path"),
        ("spiffe://prod/region/../node/n1", "malformed path"),
        ("spiffe://prod", "malformed path"),
    ],
)
def test_foreign_or_malformed_ids_are_refused(uri, says):
    with pytest.raises(Unauthenticated, match=says):
        spiffe.parse_uri(uri, "prod")


@pytest.mark.parametrize(
    "build",
    [
        lambda: spiffe.node_id_uri("Prod", "eu-west-1", "n1"),
        lambda: spiffe.node_id_uri("prod", "eu_west", "n1"),
        lambda: spiffe.node_id_uri("prod", "eu-west-1", "-n1"),
        lambda: spiffe.client_uri("prod", "a/b"),
        lambda: spiffe.client_uri("prod", ""),
        lambda: spiffe.coordinator_uri("x" * 101),
    ],
)
def test_names_outside_the_rules_cannot_be_issued(build):
    with pytest.raises(InvalidArgument, match="not allowed"):
        build()


def test_server_names_encode_the_identity_under_a_name_that_never_resolves():
    name = spiffe.server_name(PrincipalKind.NODE, "prod", "eu-west-1", "n1")
    assert name == "n1.eu-west-1.node.prod.domicile.invalid"
    assert spiffe.server_name(PrincipalKind.COORDINATOR, "prod") == "coordinator.prod.domicile.invalid"
    with pytest.raises(InvalidArgument, match="clients do not serve"):
        spiffe.server_name(PrincipalKind.CLIENT, "prod")


def test_roles_parse_by_name_and_unknown_ones_are_refused():
    assert parse_roles(["dpo", "app", "dpo"]) == {Role.DPO, Role.APP}
    with pytest.raises(InvalidArgument, match="unknown role 'root'; allowed: app, dpo, auditor, operator"):
        parse_roles(["root"])


def test_expected_peer_checks_kind_region_node_name_and_roles():
    node = spiffe.parse_uri(spiffe.node_id_uri("prod", "eu-west-1", "n1"), "prod")
    assert ExpectedPeer.node("eu-west-1", "n1").check(node) is node
    assert ExpectedPeer.node("eu-west-1").matches(node)
    assert ExpectedPeer.node().matches(node)
    assert not ExpectedPeer.node("eu-west-1", "n2").matches(node)
    assert not ExpectedPeer.coordinator().matches(node)
    with pytest.raises(
        PermissionDenied,
        match=r"peer spiffe://prod/region/eu-west-1/node/n1 is not node n1 of region us-east-1",
    ):
        ExpectedPeer.node("us-east-1", "n1").check(node)

    client = spiffe.parse_uri(spiffe.client_uri("prod", "alice"), "prod")
    with pytest.raises(PermissionDenied, match="is not client alice with role dpo"):
        ExpectedPeer.client("alice", [Role.DPO]).check(client)
    assert ExpectedPeer.client("alice").matches(client)
    assert not ExpectedPeer.client("bob").matches(client)
