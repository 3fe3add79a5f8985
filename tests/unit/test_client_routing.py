"""Routing decisions and the retry plan of the SDK, from a Topology (no network)."""

from __future__ import annotations

import random

import pytest

from domicile.causality import CausalContext, Dot
from domicile.client import (
    NodeHealth,
    NodeInfo,
    RetryPolicy,
    Topology,
    context_from_token,
    context_token,
    route,
    topology_from_pb,
)
from domicile.client.retries import Attempt
from domicile.cluster import ClusterSpec, NamespaceSpec, RegionSpec
from domicile.errors import (
    DataCorruption,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PlacementRefused,
    ResourceExhausted,
    Unavailable,
)
from domicile.model import Classification, ConflictMode
from domicile.v1 import coordinator_pb2 as cpb

REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1")


def node(region: str, health: NodeHealth = NodeHealth.UP, node_id: str | None = None) -> NodeInfo:
    return NodeInfo(node_id or region, region, f"{region}:1", health=health)


def topology(*nodes: NodeInfo) -> Topology:
    return Topology(
        revision=3,
        cluster=ClusterSpec(
            regions=tuple(RegionSpec(r) for r in REGIONS),
            namespaces=(
                NamespaceSpec("instruments", is_global=True),
                NamespaceSpec("customers_eu", regions=("eu-west-1", "eu-central-1")),
                NamespaceSpec("customers_jp", regions=("ap-northeast-1",)),
            ),
        ),
        nodes=nodes or tuple(node(r) for r in REGIONS),
    )


def test_explicit_region_wins_even_outside_the_scope():
    # The node, not the client, is the authority on placement: it refuses with the allowed regions.
    assert route(topology(), "customers_eu", region="us-east-1").region == "us-east-1"


def test_preferred_region_is_used_when_the_scope_allows_it():
    assert route(topology(), "customers_eu", preferred_region="eu-central-1").region == "eu-central-1"
    assert route(topology(), "instruments", preferred_region="ap-northeast-1").region == "ap-northeast-1"


def test_preferred_region_outside_the_scope_routes_to_the_first_allowed_region():
    assert route(topology(), "customers_eu", preferred_region="us-east-1").region == "eu-west-1"
    assert route(topology(), "customers_jp", preferred_region="us-east-1").region == "ap-northeast-1"


def test_without_preference_the_first_up_node_of_the_scope_is_chosen():
    topo = topology(node("eu-west-1", NodeHealth.DOWN), node("eu-central-1"), node("us-east-1"))
    assert route(topo, "customers_eu").region == "eu-central-1"
    # A global namespace follows the order of the cluster's regions.
    assert route(topo, "instruments").region == "us-east-1"


def test_preferred_region_that_is_down_yields_to_an_up_one():
    topo = topology(node("eu-west-1"), node("eu-central-1", NodeHealth.DOWN))
    assert route(topo, "customers_eu", preferred_region="eu-central-1").region == "eu-west-1"


def test_down_nodes_are_a_last_resort_not_excluded():
    # The coordinator's view can lag behind a restart; trying the node is better than failing.
    topo = topology(node("eu-west-1", NodeHealth.DOWN), node("us-east-1"))
    assert route(topo, "customers_eu").region == "eu-west-1"


def test_nodes_that_just_failed_are_tried_last():
    topo = topology(node("eu-west-1"), node("eu-central-1"))
    assert route(topo, "customers_eu", avoid={"eu-west-1"}).region == "eu-central-1"
    # With no alternative, the failed node is tried again rather than giving up.
    assert route(topo, "customers_eu", region="eu-west-1", avoid={"eu-west-1"}).region == "eu-west-1"


def test_allowed_regions_from_a_refusal_override_the_scope():
    topo = topology()
    chosen = route(topo, "instruments", allowed_regions=("eu-central-1", "eu-west-1"))
    assert chosen.region == "eu-central-1"
    chosen = route(
        topo, "instruments", allowed_regions=("eu-central-1", "eu-west-1"), preferred_region="eu-west-1"
    )
    assert chosen.region == "eu-west-1"


def test_unknown_namespace_goes_to_any_node_which_names_the_known_ones():
    assert route(topology(), "no_such_namespace").region == "us-east-1"


def test_several_nodes_in_a_region_choose_up_then_by_id():
    topo = topology(
        node("eu-west-1", NodeHealth.DOWN, "eu-west-1-a"),
        node("eu-west-1", NodeHealth.UP, "eu-west-1-c"),
        node("eu-west-1", NodeHealth.UP, "eu-west-1-b"),
    )
    assert route(topo, "customers_eu", region="eu-west-1").node_id == "eu-west-1-b"


def test_node_id_selects_one_node():
    assert route(topology(), None, node_id="eu-central-1").region == "eu-central-1"
    with pytest.raises(InvalidArgument, match=r"unknown node 'mars-1'.*registered nodes: us-east-1"):
        route(topology(), None, node_id="mars-1")


def test_unknown_regions_are_refused_with_the_known_ones():
    with pytest.raises(InvalidArgument, match=r"unknown region 'mars'; regions: us-east-1, us-west-2"):
        route(topology(), "instruments", region="mars")
    with pytest.raises(InvalidArgument, match="client region 'mars' is not a region of the cluster"):
        route(topology(), "instruments", preferred_region="mars")


def test_no_registered_node_in_the_scope_is_unavailable():
    topo = topology(node("us-east-1"))
    with pytest.raises(Unavailable, match=r"namespace customers_eu \(eu-west-1, eu-central-1\)"):
        route(topo, "customers_eu")
    with pytest.raises(Unavailable, match="region eu-west-1"):
        route(topo, "customers_eu", region="eu-west-1")


# -- the retry plan


def refused() -> PlacementRefused:
    return PlacementRefused("not here", ["eu-west-1", "eu-central-1"])


def test_a_refused_write_is_retried_once_at_the_allowed_regions():
    plan = Attempt(region=None, write=True)
    assert plan.next_step(refused(), node("us-east-1"), RetryPolicy())
    assert plan.allowed_regions == ("eu-west-1", "eu-central-1")
    assert not plan.next_step(refused(), node("eu-west-1"), RetryPolicy())


def test_a_refusal_is_final_when_the_region_was_explicit_or_for_a_read():
    assert not Attempt(region="us-east-1", write=True).next_step(refused(), None, RetryPolicy())
    assert not Attempt(region=None, write=False).next_step(refused(), None, RetryPolicy())
    empty = PlacementRefused("nowhere", [])
    assert not Attempt(region=None, write=True).next_step(empty, None, RetryPolicy())


@pytest.mark.parametrize(
    "error",
    [InvalidArgument("x"), NotFound("x"), FailedPrecondition("x"), DataCorruption("x")],
    ids=lambda e: type(e).__name__,
)
def test_errors_that_are_not_retriable_are_raised_at_once(error):
    assert not Attempt(region=None, write=False).next_step(error, node("us-east-1"), RetryPolicy())


@pytest.mark.parametrize(
    "error",
    [Unavailable("x"), ResourceExhausted("x"), DeadlineExceeded("x")],
    ids=lambda e: type(e).__name__,
)
def test_retriable_errors_are_retried_a_bounded_number_of_times(error):
    plan = Attempt(region=None, write=True)
    policy = RetryPolicy(attempts_max=3)
    assert plan.next_step(error, node("us-east-1"), policy)
    assert plan.next_step(error, node("us-east-1"), policy)
    assert not plan.next_step(error, node("us-east-1"), policy)
    assert plan.retries == 2


def test_unavailable_refreshes_the_topology_and_avoids_the_node():
    plan = Attempt(region=None, write=False)
    assert plan.next_step(Unavailable("gone"), node("eu-west-1"), RetryPolicy())
    assert plan.refresh
    assert plan.avoid == {"eu-west-1"}
    plan.refresh = False
    assert plan.next_step(ResourceExhausted("busy"), node("eu-central-1"), RetryPolicy())
    assert not plan.refresh
    assert plan.avoid == {"eu-west-1"}


def test_backoff_is_jittered_below_an_exponential_cap():
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng = random.Random(seed)
    policy = RetryPolicy(attempts_max=10, backoff_initial_s=0.1, backoff_max_s=0.5)
    for retry in range(1, 10):
        cap = min(0.5, 0.1 * 2 ** (retry - 1))
        for _ in range(50):
            assert 0 <= policy.backoff_s(retry, rng) <= cap
    # Placement retries go straight to the allowed region.
    assert Attempt(region=None, write=True).backoff_s(refused(), policy, rng) == 0.0


def test_retry_policy_refuses_nonsense():
    with pytest.raises(InvalidArgument, match="attempts_max is 0"):
        RetryPolicy(attempts_max=0)
    with pytest.raises(InvalidArgument, match="backoff"):
        RetryPolicy(backoff_initial_s=2.0, backoff_max_s=1.0)


# -- topology decoding and context tokens


def test_topology_from_pb_keeps_scopes_health_and_links():
    msg = cpb.Topology(revision=9, policy_version="scope-v2")
    msg.regions.add(name="eu-west-1", country="IE", jurisdiction="EU")
    msg.nodes.add(node_id="eu-west-1", region="eu-west-1", address="h:1", health=cpb.NODE_HEALTH_UP)
    msg.nodes.add(node_id="eu-west-2", region="eu-west-1", address="h:2", health=cpb.NODE_HEALTH_DOWN)
    msg.nodes.add(node_id="eu-west-3", region="eu-west-1", address="h:3")
    ns = msg.namespaces.add(name="customers_eu", regions=["eu-west-1"], conflict_mode=2, classification=4)
    setattr(msg.namespaces.add(name="instruments"), "global", True)
    msg.links.add(source_node_id="eu-west-1", target_node_id="eu-west-2", namespaces=[ns.name])
    topo = topology_from_pb(msg)
    assert topo.revision == 9 and topo.policy_version == "scope-v2"
    assert topo.regions == (RegionSpec("eu-west-1", "IE", "EU"),)
    assert [n.health for n in topo.nodes] == [NodeHealth.UP, NodeHealth.DOWN, NodeHealth.UNKNOWN]
    spec = topo.namespace("customers_eu")
    assert spec is not None
    assert spec.regions == ("eu-west-1",) and not spec.is_global
    assert spec.conflict_mode is ConflictMode.LWW and spec.classification is Classification.PERSONAL
    assert topo.namespace("instruments").is_global  # type: ignore[union-attr]
    assert topo.links[0].namespaces == ("customers_eu",)


def test_topology_from_pb_tolerates_enum_values_from_a_newer_coordinator():
    msg = cpb.Topology()
    msg.namespaces.add(name="future", conflict_mode=7, classification=42)
    spec = topology_from_pb(msg).namespace("future")
    assert spec is not None and spec.conflict_mode is ConflictMode.UNSPECIFIED


def test_context_tokens_round_trip():
    ctx = CausalContext.of({"eu-west-1": 3, "us-east-1": 1}, [Dot("eu-central-1", 5)])
    assert context_from_token(context_token(ctx)) == ctx
    assert context_from_token(context_token(CausalContext.empty())) == CausalContext.empty()


@pytest.mark.parametrize("token", ["%%%", "AAAA", "Cg0KCXVzLWVhc3QtMRAA"])
def test_malformed_context_tokens_are_invalid_arguments(token):
    with pytest.raises(InvalidArgument, match="context"):
        context_from_token(token)


def test_the_daemons_of_a_region_take_turns_and_a_down_or_failed_one_is_passed_over():
    daemons = (
        node("eu-west-1", node_id="eu-west-1"),
        node("eu-west-1", node_id="eu-west-1-2"),
        node("eu-west-1", node_id="eu-west-1-3", health=NodeHealth.DOWN),
        node("eu-central-1"),
    )
    t = topology(*daemons)
    picked = [route(t, "customers_eu", region="eu-west-1", spread=i).node_id for i in range(4)]
    assert picked == ["eu-west-1", "eu-west-1-2", "eu-west-1", "eu-west-1-2"]
    assert {
        route(t, "customers_eu", region="eu-west-1", avoid={"eu-west-1"}, spread=i).node_id for i in range(3)
    } == {"eu-west-1-2"}
    # Turns never leave the preferred region for another one.
    assert {route(t, "customers_eu", preferred_region="eu-central-1", spread=i).region for i in range(3)} == {
        "eu-central-1"
    }
