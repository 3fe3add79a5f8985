"""Regression: A backup bucket in another region of the same country and subdivision is accepted, although
the policy pack's per-region destination facts (recipient certification, transfer mechanisms)
make the policy refuse, in that region, records the node's region holds lawfully.

domicile/backup/residency.py assumes "such a region is allowed exactly where the node's region
is", but domicile/policy/rules.py decides by `pack.destinations[region]` too: the EU-US
adequacy decision covers only DPF-certified recipients, recorded per region. A backup is a copy
of every record the node holds, so the bucket lands EEA subjects' personal data where the
policy forbids it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from domicile.backup.residency import BUCKET_RULE, check_bucket_location
from domicile.cluster import parse_cluster
from domicile.errors import InvalidArgument
from domicile.model import Classification
from domicile.policy import Action, RecordFacts
from domicile.policy.select import policy_for_cluster

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "policy" / "pack.yaml"


def _cluster(tmp_path: Path):
    pack = yaml.safe_load(PACK.read_text(encoding="utf-8"))
    # A second US region in the same state as us-east-1, with no destination facts recorded
    # (its operator is not DPF-certified).
    pack["regions"].append(
        {"name": "us-east-1b", "country": "US", "subdivision": "US-VA", "jurisdiction": "US"}
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


def test_bucket_in_a_region_whose_destination_facts_differ_is_refused(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    policy = policy_for_cluster(cluster)
    eea_subject = RecordFacts("customers", Classification.PERSONAL, "subject-1", "DE")
    # The node's region holds the record lawfully (EU-US DPF, recipient certified)...
    assert policy.decide(eea_subject, "us-east-1", Action.REPLICATE).allowed
    # ...the bucket's region may not hold it (no certification recorded there).
    refused = policy.decide(eea_subject, "us-east-1b", Action.REPLICATE)
    assert not refused.allowed, refused.reason
    # So a backup of us-east-1 into a bucket located in us-east-1b must be refused.
    with pytest.raises(InvalidArgument) as err:
        check_bucket_location(cluster, "us-east-1")
    assert err.value.message.startswith(BUCKET_RULE)
