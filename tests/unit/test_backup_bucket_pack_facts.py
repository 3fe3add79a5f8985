"""Regressions of the backup bucket rule and the policy pack's per-region facts (recipient
certification, transfer mechanisms), by which the laws decide too, region by region:
- a bucket in another region of the same state was accepted although the pack recorded other
  facts of it, so the policy refused there records the node's region holds lawfully;
- then a fact recorded false differed from the same fact not recorded, which the laws read
  alike, so a valid bucket location was refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from domicile.backup.residency import BUCKET_RULE, check_bucket_location
from domicile.cluster import ClusterSpec, parse_cluster
from domicile.errors import InvalidArgument
from domicile.model import Classification
from domicile.policy import Action, RecordFacts
from domicile.policy.select import policy_for_cluster

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "policy" / "pack.yaml"


def _cluster(tmp_path: Path, same_recipient: bool) -> ClusterSpec:
    """us-east-1 backed up into a bucket in us-east-1b, a second region in the same state; with
    `same_recipient`, the pack records its recipient as it does us-east-1's (the same
    operator's second data centre, its contract register empty: mechanisms not recorded, as
    us-east-1's are recorded false), else nothing of it (not DPF-certified)."""
    pack: dict[str, Any] = yaml.safe_load(PACK.read_text(encoding="utf-8"))
    pack["regions"].append(
        {"name": "us-east-1b", "country": "US", "subdivision": "US-VA", "jurisdiction": "US"}
    )
    if same_recipient:
        pack["destinations"]["us-east-1b"] = {
            "recipient": copy.deepcopy(pack["destinations"]["us-east-1"]["recipient"])
        }
        assert all(
            fact["value"] is False
            for law in pack["destinations"]["us-east-1"]["mechanisms"].values()
            for fact in law.values()
        )
    (tmp_path / "pack.yaml").write_text(yaml.safe_dump(pack, sort_keys=False), encoding="utf-8")
    backup = {"endpoint": "http://s3.local", "bucket": "us-backups", "bucket_region": "us-east-1b"}
    return parse_cluster(
        {
            "policy_pack": "pack.yaml",
            "regions": [
                {"name": "us-east-1", "country": "US", "jurisdiction": "US", "backup": backup},
                {"name": "us-east-1b", "country": "US", "jurisdiction": "US"},
                {"name": "eu-west-1", "country": "IE", "jurisdiction": "EU"},
            ],
            "namespaces": [{"name": "customers", "regions": "global", "classification": "personal"}],
        },
        base_dir=tmp_path,
    )


def test_bucket_in_a_region_whose_destination_facts_differ_is_refused(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, same_recipient=False)
    policy = policy_for_cluster(cluster)
    eea_subject = RecordFacts("customers", Classification.PERSONAL, "subject-1", "DE")
    # The node's region holds the record lawfully (EU-US DPF, recipient certified)...
    assert policy.decide(eea_subject, "us-east-1", Action.REPLICATE).allowed
    # ...the bucket's region may not hold it (no certification recorded there).
    refused = policy.decide(eea_subject, "us-east-1b", Action.REPLICATE)
    assert not refused.allowed, refused.reason
    with pytest.raises(InvalidArgument) as err:
        check_bucket_location(cluster, "us-east-1")
    assert err.value.message.startswith(BUCKET_RULE)


def test_a_bucket_region_the_policy_treats_alike_is_accepted(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, same_recipient=True)
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
    check_bucket_location(cluster, "us-east-1")
