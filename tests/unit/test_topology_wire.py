"""The one topology type, from the coordinator's message as the node and the SDK decode it,
including enum values a newer coordinator may send that this version does not know."""

from __future__ import annotations

import yaml

from domicile.causality import CausalContext, Dot, KeyState, Version, visible
from domicile.client import route
from domicile.cluster import ClusterSpec, NamespaceSpec, RegionSpec
from domicile.model import Classification, ConflictMode
from domicile.policy import Action, RecordFacts
from domicile.subjects import HoldScope, hold_covering
from domicile.topology import Link, NodeHealth, NodeInfo, Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import record_pb2 as rpb
from domicile.wire.topology import topology_from_pb, topology_to_pb
from node.topology_view import TopologyView
from tests.support.packs import sample_pack

# Values no version of the protocol defines yet: what a newer coordinator could send.
FUTURE = 99
REGIONS = (RegionSpec("eu-west-1", "IE", "EU"), RegionSpec("eu-central-1", "DE", "EU"))


def future_topology(revision: int = 7, pack_yaml: str = "") -> cpb.Topology:
    msg = cpb.Topology(revision=revision, policy_version="future-1", policy_pack_yaml=pack_yaml)
    for r in REGIONS:
        msg.regions.add(name=r.name, country=r.country, jurisdiction=r.jurisdiction)
    msg.namespaces.add(
        name="customers_eu",
        regions=["eu-west-1", "eu-central-1"],
        conflict_mode=FUTURE,  # type: ignore[arg-type]
        classification=FUTURE,  # type: ignore[arg-type]
    )
    msg.namespaces.add(
        name="prefs_eu", regions=["eu-west-1", "eu-central-1"], conflict_mode=rpb.CONFLICT_MODE_LWW
    )
    msg.nodes.add(node_id="eu-west-1", region="eu-west-1", address="h:1", health=FUTURE)  # type: ignore[arg-type]
    msg.nodes.add(node_id="eu-central-1", region="eu-central-1", address="h:2", health=cpb.NODE_HEALTH_UP)
    msg.links.add(source_node_id="eu-west-1", target_node_id="eu-central-1", namespaces=["customers_eu"])
    return msg


def test_unknown_enum_values_decode_to_unspecified():
    topo = topology_from_pb(future_topology())
    spec = topo.namespace("customers_eu")
    assert spec is not None
    assert spec.conflict_mode is ConflictMode.UNSPECIFIED
    assert spec.classification is Classification.UNSPECIFIED
    assert topo.node("eu-west-1").health is NodeHealth.UNSPECIFIED  # type: ignore[union-attr]
    assert NodeHealth.UNSPECIFIED is NodeHealth.UNKNOWN and NodeHealth.UNSPECIFIED.label == "unknown"
    # Everything this version knows is kept.
    assert topo.namespace("prefs_eu").conflict_mode is ConflictMode.LWW  # type: ignore[union-attr]
    assert topo.node("eu-central-1").health is NodeHealth.UP  # type: ignore[union-attr]
    assert topo.outbound("eu-west-1") == [Link("eu-west-1", "eu-central-1", ("customers_eu",))]


def test_an_unset_conflict_mode_is_the_server_default():
    msg = cpb.Topology()
    msg.namespaces.add(name="plain")
    assert topology_from_pb(msg).namespace("plain").conflict_mode is ConflictMode.SIBLINGS  # type: ignore[union-attr]


def test_known_values_round_trip():
    topo = Topology(
        revision=4,
        cluster=ClusterSpec(
            regions=REGIONS,
            namespaces=(
                NamespaceSpec("customers_eu", ("eu-west-1",), classification=Classification.PERSONAL),
                NamespaceSpec("instruments", is_global=True, conflict_mode=ConflictMode.LWW),
            ),
            policy_version="p-3",
        ),
        nodes=(
            NodeInfo("eu-west-1", "eu-west-1", "h:1", "h:9", NodeHealth.UP, 17),
            NodeInfo("eu-central-1", "eu-central-1", "h:2", health=NodeHealth.DOWN),
        ),
        links=(Link("eu-west-1", "eu-central-1", ("customers_eu", "instruments")),),
    )
    back = topology_from_pb(topology_to_pb(topo))
    assert back.nodes == topo.nodes and back.links == topo.links
    assert back.namespaces == topo.namespaces and back.regions == topo.regions
    assert back.policy_version == "p-3"


def test_the_node_adopts_a_topology_with_unknown_values_and_keeps_siblings():
    view = TopologyView(topology_from_pb(cpb.Topology(revision=1)))
    assert view.replace(topology_from_pb(future_topology(revision=2)))
    assert view.revision == 2
    spec = view.topology.cluster.namespace("customers_eu")
    # A mode the node cannot apply keeps every concurrent value: nothing is dropped.
    a = Version(Dot("eu-west-1", 1), b"a", hlc=1)
    b = Version(Dot("eu-central-1", 1), b"b", hlc=2)
    state = KeyState((a, b), CausalContext.of({"eu-west-1": 1, "eu-central-1": 1}))
    assert visible(state, spec.conflict_mode) == visible(state, ConflictMode.SIBLINGS)
    # Without a pack only the scope decides, as for any namespace.
    facts = RecordFacts("customers_eu", spec.classification, "c-1", "DE")
    assert view.policy.decide(facts, "eu-central-1", Action.STORE).allowed
    assert not view.policy.decide(facts, "us-east-1", Action.STORE).allowed


def test_under_a_pack_an_unknown_classification_is_judged_as_personal_data():
    pack = sample_pack()
    view = TopologyView(topology_from_pb(cpb.Topology(revision=1)))
    pack_yaml = yaml.safe_dump(pack, sort_keys=False)
    assert view.replace(topology_from_pb(future_topology(revision=2, pack_yaml=pack_yaml)))
    spec = view.topology.cluster.namespace("customers_eu")
    for jurisdiction, allowed in (("DE", True), ("", False)):
        unknown = RecordFacts("customers_eu", spec.classification, "c-1", jurisdiction)
        personal = RecordFacts("customers_eu", Classification.PERSONAL, "c-1", jurisdiction)
        for region in ("eu-west-1", "eu-central-1"):
            assert view.policy.decide(unknown, region, Action.STORE).allowed is allowed
            assert view.policy.decide(personal, region, Action.STORE).allowed is allowed
    # A record labelled public in it is judged as personal data too, as a local write could not
    # label it looser than the namespace: without a jurisdiction it may be nowhere. Public data
    # of a namespace this version classifies may be anywhere.
    public = RecordFacts("customers_eu", Classification.PUBLIC, "", "")
    assert not view.policy.decide(public, "eu-west-1", Action.STORE).allowed
    msg = future_topology(revision=3, pack_yaml=pack_yaml)
    msg.namespaces.add(name="instruments", classification=rpb.CLASSIFICATION_PUBLIC, **{"global": True})
    assert view.replace(topology_from_pb(msg))
    instruments = RecordFacts("instruments", Classification.PUBLIC, "", "")
    assert view.policy.decide(instruments, "eu-west-1", Action.STORE).allowed


def test_the_client_routes_with_unknown_health():
    topo = topology_from_pb(future_topology())
    # A node whose health is unknown is ranked after an up node, never dropped.
    assert route(topo, "customers_eu", preferred_region="eu-west-1").node_id == "eu-central-1"
    assert route(topo, "customers_eu", region="eu-west-1").node_id == "eu-west-1"
    assert route(topo, None, node_id="eu-west-1").health is NodeHealth.UNKNOWN


def test_regression_a_hold_of_unknown_scope_covers_every_record():
    """A hold whose scope this version does not know covered nothing, so retention and erasure
    would have removed records a newer coordinator's hold protects. It fails safe now."""
    msg = future_topology()
    hold = msg.holds.add(hold_id="hold-1", subject_id="c-1", reason="litigation", placed_unix_ms=1)
    hold.scope = FUTURE  # type: ignore[assignment]
    (decoded,) = topology_from_pb(msg).holds
    assert decoded.scope is HoldScope.UNSPECIFIED
    assert decoded.covers("customers_eu", "any-key", "")
    assert decoded.covers("trades", "t-1", "someone-else")
    assert hold_covering([decoded], "customers_eu", "k", "c-2") is decoded
    assert "does not know" in decoded.describe()
