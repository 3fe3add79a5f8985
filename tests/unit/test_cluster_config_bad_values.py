"""Regression: The cluster config accepts values it should refuse (README: "Unknown regions, duplicate names
and bad values are rejected with a message that names the field"): region names are taken with
str() unchecked, so an empty name, a YAML null ("None") or a name no node can ever serve under
(node identities need 1-63 of a-z 0-9 '-') loads; and a namespace's `owner:` or `description:`
left empty in YAML (null) becomes the text "None" -- an owner the default Cedar policies match
against an app principal's name."""

from __future__ import annotations

from typing import Any

import pytest

from domicile.cluster import parse_cluster
from domicile.errors import InvalidArgument
from domicile.identity.spiffe import check_region


def config(region: Any = "eu-west-1", **ns: Any) -> dict[str, Any]:
    return {
        "regions": [{"name": region}],
        "namespaces": [{"name": "customers", "regions": "global", **ns}],
    }


@pytest.mark.parametrize("name", ["", None, "EU West", "eu_west/1"])
def test_a_region_name_no_node_can_serve_is_refused(name: Any):
    # What a node's identity (and `domicile certs issue`) accepts as a region:
    with pytest.raises(InvalidArgument):
        check_region(str(name))
    with pytest.raises(InvalidArgument, match=r"regions\[0\]"):
        parse_cluster(config(region=name), "cluster.yaml")


@pytest.mark.parametrize("field", ["owner", "description"])
def test_an_empty_yaml_value_is_not_stored_as_the_text_none(field: str):
    try:
        cluster = parse_cluster(config(**{field: None}), "cluster.yaml")
    except InvalidArgument:
        return  # refused naming the field: fine
    assert getattr(cluster.namespace("customers"), field) != "None"
