"""Which policy a cluster enforces: the namespace scopes alone, or the scopes and the
jurisdiction rules of a policy pack together.

With a pack, a record may be held in a region only when both allow it: the namespace scope is
the operator's choice of where a dataset lives, the pack is the law. A refusal names the layer
that refused; `allowed_regions` is what both allow, so routing never lands on a region that
would refuse.
"""

from __future__ import annotations

import dataclasses
import functools

from domicile.cluster import ClusterSpec
from domicile.model import Classification
from domicile.policy import Decision, PlacementPolicy, RecordFacts, ScopePolicy
from domicile.policy.engine import JurisdictionPolicy
from domicile.policy.pack import parse_pack
from domicile.policy.pack_model import PolicyPack
from domicile.yaml_text import load_yaml


class LayeredPolicy:
    """Namespace scope first, then the law of the subject's jurisdiction."""

    def __init__(self, scope: ScopePolicy, law: JurisdictionPolicy, version: str) -> None:
        self.scope = scope
        self.law = law
        self.version = version

    def decide(self, facts: RecordFacts, region: str, action: str) -> Decision:
        scoped = self.scope.decide(facts, region, action)
        judged = judged_facts(self.scope.cluster, facts)
        lawful = self.law.decide(judged, region, action)
        floor = _at_floor(self.scope.cluster, judged)
        if floor is not None:
            # A label stricter than the namespace's is judged by both: the pack may confine the
            # namespace's classification to regions its stricter label may enter (strictness is
            # an order of labels, not of the regions a pack allows each).
            at_floor = self.law.decide(floor, region, action)
            regions = tuple(r for r in lawful.allowed_regions if r in at_floor.allowed_regions)
            if lawful.allowed and not at_floor.allowed:
                lawful = at_floor
            elif lawful.allowed:
                # Allowed under both: with every field either removes, and both answers' facts.
                lawful = dataclasses.replace(
                    lawful,
                    redacted_fields=tuple(
                        dict.fromkeys((*lawful.redacted_fields, *at_floor.redacted_fields))
                    ),
                    evidence=tuple(dict.fromkeys((*lawful.evidence, *at_floor.evidence))),
                )
            lawful = dataclasses.replace(lawful, allowed_regions=regions)
        both = tuple(r for r in lawful.allowed_regions if r in scoped.allowed_regions)
        if not scoped.allowed:
            return dataclasses.replace(scoped, allowed_regions=both)
        return dataclasses.replace(lawful, allowed_regions=both)


def judged_facts(cluster: ClusterSpec, facts: RecordFacts) -> RecordFacts:
    """The facts the law judges: a record labelled looser than its namespace's classification
    is judged by the namespace's. A local write cannot carry such a label (it is refused), but
    a replicated version can (from a misconfigured or rogue node), and so can every record
    written before the operator made the namespace stricter. Judging the label as written would
    let those be stored, served and scanned as what they are not."""
    spec = cluster.find_namespace(facts.namespace)
    if spec is None:
        return facts
    floor = spec.classification_floor
    # A version without a label is judged as personal data (JurisdictionPolicy), never looser.
    label = facts.classification
    if label is Classification.UNSPECIFIED:
        label = Classification.PERSONAL
    if label.strictness >= floor.strictness:
        return facts
    return dataclasses.replace(facts, classification=floor)


def _at_floor(cluster: ClusterSpec, judged: RecordFacts) -> RecordFacts | None:
    """The facts again with the namespace's classification, when the judged label is another
    (a stricter one); None when the label is the namespace's own."""
    spec = cluster.find_namespace(judged.namespace)
    if spec is None:
        return None
    floor = spec.classification_floor
    if floor is Classification.UNSPECIFIED or judged.classification is floor:
        return None
    return dataclasses.replace(judged, classification=floor)


@functools.lru_cache(maxsize=8)
def _pack(text: str, source: str) -> PolicyPack:
    return parse_pack(load_yaml(text, f"policy pack {source}"), source)


def pack_of(cluster: ClusterSpec) -> PolicyPack | None:
    """The cluster's parsed policy pack, or None when it has none (raises InvalidArgument when
    the pack is malformed)."""
    if not cluster.policy_pack_yaml:
        return None
    return _pack(cluster.policy_pack_yaml, cluster.policy_pack_source or "policy pack")


def policy_for_cluster(cluster: ClusterSpec) -> PlacementPolicy:
    """The policy the cluster's configuration asks for; raises InvalidArgument when its pack is
    malformed or disagrees with the cluster's regions."""
    scope = ScopePolicy(cluster)
    pack = pack_of(cluster)
    if pack is None:
        return scope
    return LayeredPolicy(scope, JurisdictionPolicy.for_cluster(pack, cluster), cluster.policy_version)
