"""The link planner: links follow namespace scopes, never health."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest

from coordinator.planner import namespaces_by_region, plan_links
from domicile.cluster import ClusterSpec, parse_cluster
from domicile.topology import Link


@dataclass(frozen=True)
class N:
    node_id: str
    region: str


CLUSTER = parse_cluster(
    {
        "regions": [
            {"name": "us-east-1", "country": "US", "jurisdiction": "US"},
            {"name": "eu-west-1", "country": "IE", "jurisdiction": "EU"},
            {"name": "eu-central-1", "country": "DE", "jurisdiction": "EU"},
            {"name": "ap-northeast-1", "country": "JP", "jurisdiction": "JP"},
        ],
        "namespaces": [
            {"name": "catalog", "regions": "global"},
            {"name": "eu_users", "regions": ["eu-west-1", "eu-central-1"]},
            {"name": "jp_orders", "regions": ["ap-northeast-1"]},
        ],
    }
)


def as_map(links: tuple[Link, ...]) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(li.source_node_id, li.target_node_id): li.namespaces for li in links}


def test_global_namespace_links_every_ordered_pair():
    links = as_map(plan_links([N("us-1", "us-east-1"), N("jp-1", "ap-northeast-1")], CLUSTER))
    assert links == {("us-1", "jp-1"): ("catalog",), ("jp-1", "us-1"): ("catalog",)}


def test_eu_namespace_links_only_eu_regions():
    nodes = [N("us-1", "us-east-1"), N("eu-1", "eu-west-1"), N("eu-2", "eu-central-1")]
    links = as_map(plan_links(nodes, CLUSTER))
    assert links[("eu-1", "eu-2")] == ("catalog", "eu_users")
    assert links[("eu-2", "eu-1")] == ("catalog", "eu_users")
    assert links[("eu-1", "us-1")] == ("catalog",)
    assert links[("us-1", "eu-2")] == ("catalog",)
    assert len(links) == 6


def test_single_region_namespace_links_nodes_of_that_region_only():
    nodes = [N("jp-1", "ap-northeast-1"), N("jp-2", "ap-northeast-1"), N("eu-1", "eu-west-1")]
    links = as_map(plan_links(nodes, CLUSTER))
    assert links[("jp-1", "jp-2")] == ("catalog", "jp_orders")
    assert links[("jp-2", "jp-1")] == ("catalog", "jp_orders")
    assert links[("jp-1", "eu-1")] == ("catalog",)


def test_no_shared_namespace_means_no_link():
    cluster = parse_cluster(
        {
            "regions": [{"name": "a"}, {"name": "b"}],
            "namespaces": [{"name": "only_a", "regions": ["a"]}, {"name": "only_b", "regions": ["b"]}],
        }
    )
    assert plan_links([N("n-a", "a"), N("n-b", "b")], cluster) == ()


def test_no_self_links_and_a_lone_node_has_none():
    assert plan_links([N("eu-1", "eu-west-1")], CLUSTER) == ()
    assert plan_links([], CLUSTER) == ()


def test_node_in_unconfigured_region_gets_no_link_even_for_global_namespaces():
    links = plan_links([N("us-1", "us-east-1"), N("old-1", "sa-east-1")], CLUSTER)
    assert links == ()


def test_namespaces_keep_cluster_config_order_and_links_are_sorted():
    nodes = [N("eu-2", "eu-central-1"), N("eu-1", "eu-west-1"), N("us-1", "us-east-1")]
    links = plan_links(nodes, CLUSTER)
    pairs = [(li.source_node_id, li.target_node_id) for li in links]
    assert pairs == sorted(pairs)
    assert plan_links(list(reversed(nodes)), CLUSTER) == links


def test_duplicate_node_id_in_two_regions_is_refused():
    with pytest.raises(ValueError, match="two different regions"):
        plan_links([N("x", "us-east-1"), N("x", "eu-west-1")], CLUSTER)


def test_namespaces_by_region():
    allowed = namespaces_by_region(CLUSTER)
    assert allowed["us-east-1"] == ("catalog",)
    assert allowed["eu-west-1"] == ("catalog", "eu_users")
    assert allowed["ap-northeast-1"] == ("catalog", "jp_orders")


def random_cluster(rng: random.Random) -> ClusterSpec:
    regions = [f"r{i}" for i in range(rng.randint(1, 5))]
    namespaces = []
    for i in range(rng.randint(0, 5)):
        scope: object = "global" if rng.random() < 0.2 else rng.sample(regions, rng.randint(1, len(regions)))
        namespaces.append({"name": f"ns{i}", "regions": scope})
    return parse_cluster({"regions": [{"name": r} for r in regions], "namespaces": namespaces})


def test_random_clusters_satisfy_the_link_rule():
    seed = int(os.environ.get("PLANNER_SEED", random.randrange(2**32)))
    print(f"PLANNER_SEED={seed}")
    rng = random.Random(seed)
    for _ in range(200):
        cluster = random_cluster(rng)
        regions = [*cluster.region_names(), "unconfigured"]
        nodes = [N(f"n{i}", rng.choice(regions)) for i in range(rng.randint(0, 7))]
        links = as_map(plan_links(nodes, cluster))
        configured = set(cluster.region_names())
        for s in nodes:
            for t in nodes:
                if s is t:
                    assert (s.node_id, t.node_id) not in links
                    continue
                expected = tuple(
                    ns.name
                    for ns in cluster.namespaces
                    if s.region in configured
                    and t.region in configured
                    and ns.allows(s.region)
                    and ns.allows(t.region)
                )
                assert links.get((s.node_id, t.node_id), ()) == expected, f"seed {seed}"
                # Both directions carry the same namespaces.
                assert links.get((s.node_id, t.node_id)) == links.get((t.node_id, s.node_id))
