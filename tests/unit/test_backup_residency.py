"""Where a region's backup bucket may be: the rule a node checks before it starts."""

from __future__ import annotations

from typing import Any

import pytest

from domicile.backup.residency import BUCKET_RULE, check_bucket_location
from domicile.cluster import parse_cluster
from domicile.errors import InvalidArgument

REGIONS = [
    {"name": "eu-west-1", "country": "IE", "jurisdiction": "EU"},
    {"name": "eu-west-1b", "country": "IE", "jurisdiction": "EU"},
    {"name": "eu-central-1", "country": "DE", "jurisdiction": "EU"},
    {"name": "us-east-1", "country": "US", "jurisdiction": "US"},
]


def _cluster(bucket_region: str, namespaces: list[dict[str, Any]] | None = None) -> Any:
    regions: list[dict[str, Any]] = [dict(r) for r in REGIONS]
    regions[0]["backup"] = {
        "endpoint": "http://s3.local",
        "bucket": "eu-backups",
        "bucket_region": bucket_region,
    }
    return parse_cluster(
        {
            "regions": regions,
            "namespaces": namespaces or [{"name": "customers", "regions": ["eu-west-1", "eu-west-1b"]}],
        }
    )


def test_a_bucket_in_the_nodes_own_region_is_allowed() -> None:
    check_bucket_location(_cluster("eu-west-1"), "eu-west-1")


def test_a_bucket_in_another_region_of_the_same_country_that_every_scope_allows_is_allowed() -> None:
    check_bucket_location(_cluster("eu-west-1b"), "eu-west-1")


@pytest.mark.parametrize(
    ("bucket_region", "namespaces", "says"),
    [
        ("us-east-1", None, "is in US/US, the node's region in IE/EU"),
        # Same jurisdiction, another country: the law may still tell them apart.
        ("eu-central-1", None, "is in DE/EU, the node's region in IE/EU"),
        (
            "eu-west-1b",
            [{"name": "only_west", "regions": ["eu-west-1"]}],
            "namespace only_west may be held in eu-west-1 but not in eu-west-1b",
        ),
    ],
)
def test_a_bucket_the_policy_does_not_allow_for_every_record_is_refused_naming_the_rule(
    bucket_region: str, namespaces: list[dict[str, Any]] | None, says: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_bucket_location(_cluster(bucket_region, namespaces), "eu-west-1")
    assert refused.value.message.startswith(BUCKET_RULE + ":")
    assert says in refused.value.message


def test_a_bucket_located_in_no_configured_region_is_a_config_error() -> None:
    with pytest.raises(InvalidArgument, match="bucket_region 'mars-1' is not a configured region"):
        _cluster("mars-1")


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("endpoint", "s3.local", "must be an http:// or https:// URL"),
        ("bucket", "Bad_Bucket", "is not an S3 bucket name"),
        ("retention_days", 0, "retention_days must be 1 to 36500"),
        ("colour", "blue", "unknown fields ['colour']"),
    ],
)
def test_bad_backup_settings_name_the_field(field: str, value: object, says: str) -> None:
    regions: list[dict[str, Any]] = [dict(r) for r in REGIONS]
    backup: dict[str, object] = {
        "endpoint": "http://s3.local",
        "bucket": "eu-backups",
        "bucket_region": "eu-west-1",
    }
    backup[field] = value
    regions[0]["backup"] = backup
    with pytest.raises(InvalidArgument, match=r"regions\[0\]\.backup") as refused:
        parse_cluster({"regions": regions, "namespaces": []})
    assert says in refused.value.message
