"""The sample cluster configuration that `domicile up` runs and users copy."""

from __future__ import annotations

from pathlib import Path

from domicile.cluster import load_cluster
from domicile.model import Classification, ConflictMode
from domicile.policy import Action, RecordFacts
from domicile.policy.pack import load_pack
from domicile.policy.select import LayeredPolicy, policy_for_cluster

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cluster.yaml"


def test_the_sample_has_the_seven_regions_with_their_jurisdictions():
    cluster = load_cluster(SAMPLE)
    assert [(r.name, r.country, r.jurisdiction) for r in cluster.regions] == [
        ("us-east-1", "US", "US"),
        ("us-west-2", "US", "US"),
        ("eu-west-1", "IE", "EU"),
        ("eu-central-1", "DE", "EU"),
        ("ap-northeast-1", "JP", "JP"),
        ("sa-east-1", "BR", "BR"),
        ("ap-northeast-2", "KR", "KR"),
    ]
    assert cluster.policy_version
    assert cluster.heartbeat_interval_ms > 0 and cluster.missed_heartbeats_max > 0


def test_the_sample_namespaces_and_their_scopes():
    cluster = load_cluster(SAMPLE)
    instruments = cluster.namespace("instruments")
    assert instruments.is_global
    assert instruments.conflict_mode is ConflictMode.LWW
    assert instruments.classification is Classification.PUBLIC
    assert instruments.owner == "market-data"
    assert instruments.retention_class == "reference_data"
    for name, classification in (
        ("customers", Classification.PERSONAL),
        ("trades", Classification.FINANCIAL),
    ):
        spec = cluster.namespace(name)
        assert spec.is_global and spec.classification is classification
        assert spec.conflict_mode is ConflictMode.SIBLINGS
    trades = cluster.namespace("trades_eu")
    assert trades.classification is Classification.FINANCIAL
    assert trades.regions == ("eu-west-1", "eu-central-1")
    for spec in cluster.namespaces:
        assert spec.owner and spec.retention_class and spec.description, spec.name


def test_the_sample_enforces_the_shipped_policy_pack():
    cluster = load_cluster(SAMPLE)
    pack = load_pack(SAMPLE.parent / "policy" / "pack.yaml")
    assert cluster.policy_version == pack.version
    assert isinstance(policy_for_cluster(cluster), LayeredPolicy)


def store_regions(namespace: str, jurisdiction: str) -> list[str]:
    cluster = load_cluster(SAMPLE)
    policy = policy_for_cluster(cluster)
    facts = RecordFacts(namespace, cluster.namespace(namespace).classification, "c-1", jurisdiction)
    return [r for r in cluster.region_names() if policy.decide(facts, r, Action.STORE).allowed]


def test_a_customer_is_stored_where_the_law_of_their_jurisdiction_allows():
    # GDPR: the EEA, adequate countries (Japan; Brazil while its decision is switched on) and
    # DPF-certified recipients (us-east-1 in the sample). PIPL: nowhere outside China.
    assert store_regions("customers", "DE") == [
        "us-east-1",
        "eu-west-1",
        "eu-central-1",
        "ap-northeast-1",
        "sa-east-1",
        "ap-northeast-2",
    ]
    assert store_regions("customers", "CN") == []
    assert "us-east-1" not in store_regions("customers", "JP")


def test_a_korean_customer_is_stored_in_seoul_and_the_eea():
    # Regression: before PIPA was in the pack, KR was unlisted and refused in every region.
    assert store_regions("customers", "KR") == ["eu-west-1", "eu-central-1", "ap-northeast-2"]
    assert store_regions("trades", "KR") == ["eu-west-1", "eu-central-1", "ap-northeast-2"]


def test_a_scope_narrows_what_the_law_allows():
    assert store_regions("trades_eu", "DE") == ["eu-west-1", "eu-central-1"]
    assert store_regions("trades_eu", "US-CA") == ["eu-west-1", "eu-central-1"]
    assert store_regions("trades_eu", "CN") == []
