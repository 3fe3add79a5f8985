"""Regression: The backup bucket rule (domicile/backup/residency.py `_facts`) compares the destination facts
the pack records of two regions as (name, value) pairs, so a fact recorded `false` of the node's
region and simply not recorded of the bucket's region counts as a difference. The pack defines
"absent" as "not recorded, treated as no" (deploy/policy/pack.yaml, destinations), and the
policy decides the same in both regions: a bucket the policy allows exactly where the node's
region is allowed is refused, and the node whose config names it refuses to start.

The shipped sample pack records four transfer mechanisms of us-east-1 as false; a second region
of the same state with the same (true) DPF certifications recorded, and those false mechanisms
left unrecorded, is such a region.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from domicile.backup.residency import check_bucket_location
from domicile.cluster import parse_cluster
from domicile.model import Classification
from domicile.policy import Action, RecordFacts
from domicile.policy.select import policy_for_cluster

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "policy" / "pack.yaml"


def _cluster(tmp_path: Path):
    pack = yaml.safe_load(PACK.read_text(encoding="utf-8"))
    pack["regions"].append(
        {"name": "us-east-1b", "country": "US", "subdivision": "US-VA", "jurisdiction": "US"}
    )
    # The same operator's second data centre: the same certifications; its contract register
    # has no entries (mechanisms not recorded: "treated as no", as us-east-1's recorded false).
    pack["destinations"]["us-east-1b"] = {
        "recipient": copy.deepcopy(pack["destinations"]["us-east-1"]["recipient"])
    }
    assert all(
        fact["value"] is False
        for law in pack["destinations"]["us-east-1"]["mechanisms"].values()
        for fact in law.values()
    )
    (tmp_path / "pack.yaml").write_text(yaml.safe_dump(pack, sort_keys=False), encoding="utf-8")
    return parse_cluster(
        {
            "policy_pack": "pack.yaml",
            "regions": [
                {
                    "name": "us-east-1",
                    "country": "US",
                    "jurisdiction": "US",
                    "backup": {
                        "endpoint": "http://s3.local",
                        "bucket": "us-backups",
                        "bucket_region": "us-east-1b",
                    },
                },
                {"name": "us-east-1b", "country": "US", "jurisdiction": "US"},
                {"name": "eu-west-1", "country": "IE", "jurisdiction": "EU"},
            ],
            "namespaces": [{"name": "customers", "regions": "global", "classification": "personal"}],
        },
        base_dir=tmp_path,
    )


def test_a_bucket_region_the_policy_treats_alike_is_accepted(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    policy = policy_for_cluster(cluster)
    # The policy answers alike in both regions, for every classification, subject and action.
    for classification in (
        Classification.PERSONAL,
        Classification.FINANCIAL,
        Classification.SENSITIVE_PERSONAL,
    ):
        for jurisdiction in ("DE", "GB", "CH", "JP", "KR", "BR", "US-CA", "US", "IN", "CN"):
            for action in (Action.STORE, Action.REPLICATE, Action.READ):
                facts = RecordFacts("customers", classification, "s", jurisdiction)
                here = policy.decide(facts, "us-east-1", action)
                there = policy.decide(facts, "us-east-1b", action)
                assert here.allowed == there.allowed, (classification, jurisdiction, action)
    # So the bucket is where every record us-east-1 may hold may be.
    check_bucket_location(cluster, "us-east-1")
