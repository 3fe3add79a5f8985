"""The kept plans of cache hits (node/cache/hit_plans.py): used only for the same entry bytes,
namespace definition and key; bounded in count and in the entry size they are kept for."""

from __future__ import annotations

from domicile.cluster import NamespaceSpec
from domicile.policy import RecordFacts
from node.cache.hit_plans import HitPlan, HitPlans


def plan(spec: NamespaceSpec, key: str) -> HitPlan:
    return HitPlan(spec, key, (), len(key), (RecordFacts(spec.name),))


def test_a_plan_serves_only_its_entry_namespace_definition_and_key() -> None:
    plans = HitPlans()
    spec = NamespaceSpec("instruments", is_global=True)
    kept = plan(spec, "eurusd")
    plans.keep(b"entry", kept)
    assert plans.get(b"entry", spec, "eurusd") is kept
    assert plans.get(b"other entry", spec, "eurusd") is None
    assert plans.get(b"entry", spec, "gbpusd") is None  # the same bytes copied to another key
    # An equal definition from a newer topology is another object: planned again.
    assert plans.get(b"entry", NamespaceSpec("instruments", is_global=True), "eurusd") is None


def test_plans_are_bounded_oldest_first_and_large_entries_are_not_kept() -> None:
    plans = HitPlans(plans_max=3, entry_bytes_max=16)
    spec = NamespaceSpec("instruments", is_global=True)
    for i in range(5):
        plans.keep(b"entry-%d" % i, plan(spec, f"k{i}"))
    assert len(plans) == 3
    assert plans.get(b"entry-1", spec, "k1") is None
    assert plans.get(b"entry-4", spec, "k4") is not None
    plans.keep(b"e" * 17, plan(spec, "big"))
    assert plans.get(b"e" * 17, spec, "big") is None and len(plans) == 3
