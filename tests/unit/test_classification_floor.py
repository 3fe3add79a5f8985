"""A record is judged by the stricter of its own label and its namespace's classification: a
replicated version labelled looser than its namespace (a rogue or misconfigured node), or a
record written before the operator made its namespace stricter, is never stored, served or
scanned as what it is not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from domicile.cluster import load_cluster
from domicile.model import Classification
from domicile.policy import Action, RecordFacts
from domicile.policy.select import LayeredPolicy, judged_facts, policy_for_cluster

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "cluster.yaml"
CLUSTER = load_cluster(SAMPLE)


def _layered() -> LayeredPolicy:
    policy = policy_for_cluster(CLUSTER)
    assert isinstance(policy, LayeredPolicy)
    return policy


def test_a_chinese_customer_labelled_public_is_still_judged_as_personal_data() -> None:
    # PIPL: a Chinese subject's personal data may not leave China, and no region of the sample
    # is in China; a public record may go anywhere.
    policy = _layered()
    labelled = RecordFacts("customers", Classification.PUBLIC, "c-1", "CN")
    for region in CLUSTER.region_names():
        assert not policy.decide(labelled, region, Action.STORE).allowed, region
        assert not policy.decide(labelled, region, Action.READ).allowed, region
    # Negative control: the law alone, asked about the label as written, allows it.
    assert policy.law.decide(labelled, "eu-west-1", Action.STORE).allowed


def test_a_label_stricter_than_the_namespace_is_kept() -> None:
    facts = RecordFacts("instruments", Classification.PERSONAL, "c-1", "CN")
    assert judged_facts(CLUSTER, facts) is facts
    assert not _layered().decide(facts, "eu-west-1", Action.STORE).allowed


def test_a_looser_label_is_raised_to_the_namespace_classification() -> None:
    facts = RecordFacts("trades", Classification.INTERNAL, "c-1", "DE")
    assert judged_facts(CLUSTER, facts).classification is Classification.FINANCIAL


def test_a_version_without_a_label_is_judged_as_personal_or_stricter() -> None:
    # Unlabelled is judged as personal data by the law; a financial namespace raises it further,
    # and a public one never lowers it.
    unlabelled = RecordFacts("trades", Classification.UNSPECIFIED, "c-1", "DE")
    assert judged_facts(CLUSTER, unlabelled).classification is Classification.FINANCIAL
    public_ns = RecordFacts("instruments", Classification.UNSPECIFIED, "c-1", "DE")
    assert judged_facts(CLUSTER, public_ns) is public_ns


def test_a_namespace_this_version_does_not_classify_is_judged_as_personal() -> None:
    unknown = dataclasses.replace(CLUSTER.namespace("instruments"), classification=Classification.UNSPECIFIED)
    assert unknown.classification_floor is Classification.PERSONAL
    cluster = dataclasses.replace(
        CLUSTER, namespaces=tuple(unknown if n.name == "instruments" else n for n in CLUSTER.namespaces)
    )
    facts = RecordFacts("instruments", Classification.PUBLIC, "c-1", "CN")
    assert judged_facts(cluster, facts).classification is Classification.PERSONAL
