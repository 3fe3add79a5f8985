"""The sample cluster configuration that `domicile up` runs and users copy."""

from __future__ import annotations

from pathlib import Path

from domicile.cluster import load_cluster
from domicile.model import Classification, ConflictMode
from domicile.policy import Action, RecordFacts, ScopePolicy

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cluster.yaml"


def test_the_sample_has_the_six_regions_with_their_jurisdictions():
    cluster = load_cluster(SAMPLE)
    assert [(r.name, r.country, r.jurisdiction) for r in cluster.regions] == [
        ("us-east-1", "US", "US"),
        ("us-west-2", "US", "US"),
        ("eu-west-1", "IE", "EU"),
        ("eu-central-1", "DE", "EU"),
        ("ap-northeast-1", "JP", "JP"),
        ("sa-east-1", "BR", "BR"),
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
    expected = {
        "customers_eu": ("eu-west-1", "eu-central-1"),
        "customers_us": ("us-east-1", "us-west-2"),
        "customers_jp": ("ap-northeast-1",),
        "customers_br": ("sa-east-1",),
    }
    for name, regions in expected.items():
        spec = cluster.namespace(name)
        assert spec.regions == regions and not spec.is_global
        assert spec.classification is Classification.PERSONAL
        assert spec.conflict_mode is ConflictMode.SIBLINGS
    assert cluster.namespace("customers_eu").conflict_mode is ConflictMode.SIBLINGS
    trades = cluster.namespace("trades_eu")
    assert trades.classification is Classification.FINANCIAL
    assert trades.regions == ("eu-west-1", "eu-central-1")
    for spec in cluster.namespaces:
        assert spec.owner and spec.retention_class and spec.description, spec.name


def test_eu_personal_data_may_not_be_stored_outside_the_eu():
    policy = ScopePolicy(load_cluster(SAMPLE))
    facts = RecordFacts("customers_eu", Classification.PERSONAL, "c-1", "DE")
    allowed = [
        r for r in load_cluster(SAMPLE).region_names() if policy.decide(facts, r, Action.STORE).allowed
    ]
    assert allowed == ["eu-west-1", "eu-central-1"]
