"""What a Get does with a cache hit's state, worked out once per entry and kept for the next hit
of the same bytes: the versions it answers, the answer's weight and each version's facts for
the read policy.

All three follow from the entry's bytes, the namespace's definition and the key alone when no
version shown is sealed under a subject's data key (those are opened on an offload thread, and
erasure can change what they open to, so they are never planned): the versions are then the
visible ones of the state, as stored, which the bytes fix and the conflict mode picks. A plan
is used only for the same namespace definition (the object of the topology in force: a new
topology brings new ones) and the same key. The read policy still decides, counts and audits
every read from the facts; only building them again is saved. On the event loop only.
"""

from __future__ import annotations

from dataclasses import dataclass

from domicile.causality import Version
from domicile.cluster import NamespaceSpec
from domicile.memo import remember
from domicile.policy import RecordFacts

# How many plans are kept (the oldest goes first), and the largest entry one is kept for (its
# bytes are the key): as for the decoded states they come from (read_cache.py).
PLANS_MAX = 1024
PLAN_ENTRY_BYTES_MAX = 4096


@dataclass(frozen=True, slots=True)
class HitPlan:
    spec: NamespaceSpec
    key: str
    versions: tuple[Version, ...]
    weight: int
    facts: tuple[RecordFacts, ...]


class HitPlans:
    def __init__(self, plans_max: int = PLANS_MAX, entry_bytes_max: int = PLAN_ENTRY_BYTES_MAX) -> None:
        self.plans_max = plans_max
        self.entry_bytes_max = entry_bytes_max
        self._plans: dict[bytes, HitPlan] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def get(self, entry: bytes, spec: NamespaceSpec, key: str) -> HitPlan | None:
        plan = self._plans.get(entry)
        if plan is None or plan.spec is not spec or plan.key != key:
            return None
        return plan

    def keep(self, entry: bytes, plan: HitPlan) -> None:
        if len(entry) > self.entry_bytes_max:
            return
        remember(self._plans, entry, plan, self.plans_max)
