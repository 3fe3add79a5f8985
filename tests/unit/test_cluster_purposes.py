"""The optional `purposes` of a namespace in the cluster config (GDPR Art. 5(1)(b))."""

from __future__ import annotations

from pathlib import Path

import pytest

from domicile.cluster import load_cluster, parse_cluster
from domicile.errors import InvalidArgument

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cluster.yaml"


def config(**namespace: object) -> dict[str, object]:
    return {
        "regions": [{"name": "eu-west-1"}],
        "namespaces": [{"name": "customers", "regions": "global", **namespace}],
    }


def test_no_purposes_means_no_limitation():
    assert parse_cluster(config()).namespace("customers").purposes == ()


def test_purposes_are_kept_in_order():
    spec = parse_cluster(config(purposes=["trade_execution", "settlement"])).namespace("customers")
    assert spec.purposes == ("trade_execution", "settlement")


def test_the_sample_limits_the_personal_namespaces_and_not_reference_data():
    cluster = load_cluster(SAMPLE)
    assert cluster.namespace("instruments").purposes == ()
    for name in ("customers", "trades", "trades_eu"):
        assert "trade_execution" in cluster.namespace(name).purposes


@pytest.mark.parametrize(
    ("purposes", "message"),
    [
        ("trade_execution", "namespaces[0] (customers): purposes must be a list of short identifiers"),
        ([3], "namespaces[0] (customers): purposes[0] must be a string"),
        (["Trade Execution"], "namespaces[0] (customers): purposes[0]: invalid purpose 'Trade Execution'"),
        (["x" * 33], "purposes[0]: invalid purpose"),
        (["a", "b", "a"], "namespaces[0] (customers): purposes[2]: 'a' is listed twice"),
    ],
)
def test_malformed_purposes_are_refused_naming_the_field(purposes, message):
    with pytest.raises(InvalidArgument) as exc:
        parse_cluster(config(purposes=purposes))
    assert message in exc.value.message
