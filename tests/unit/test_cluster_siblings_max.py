"""The sibling cap of a namespace in the cluster config, and its way to the nodes."""

from __future__ import annotations

import pytest

from domicile.cluster import SIBLINGS_MAX_DEFAULT, SIBLINGS_MAX_LIMIT, parse_cluster
from domicile.errors import InvalidArgument
from domicile.topology import Topology
from domicile.v1 import coordinator_pb2 as cpb
from domicile.wire.topology import topology_from_pb, topology_to_pb


def config(**namespace: object) -> dict[str, object]:
    return {
        "regions": [{"name": "eu-west-1"}],
        "namespaces": [{"name": "customers", "regions": "global", **namespace}],
    }


def test_the_default_cap_is_sixteen() -> None:
    assert parse_cluster(config()).namespace("customers").siblings_max == SIBLINGS_MAX_DEFAULT == 16


def test_a_configured_cap_reaches_the_nodes_with_the_topology() -> None:
    cluster = parse_cluster(config(siblings_max=4))
    decoded = topology_from_pb(
        cpb.Topology.FromString(topology_to_pb(Topology(1, cluster)).SerializeToString())
    )
    assert decoded.cluster.namespace("customers").siblings_max == 4


def test_a_topology_without_the_field_gets_the_default() -> None:
    msg = topology_to_pb(Topology(1, parse_cluster(config(siblings_max=4))))
    msg.namespaces[0].ClearField("siblings_max")
    assert topology_from_pb(msg).cluster.namespace("customers").siblings_max == SIBLINGS_MAX_DEFAULT


@pytest.mark.parametrize("value", [0, -1, SIBLINGS_MAX_LIMIT + 1, "8", 2.5, True, None])
def test_a_bad_cap_is_refused_at_load_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_cluster(config(siblings_max=value))
    assert "namespaces[0] (customers): siblings_max must be a whole number from 1 to" in exc.value.message
