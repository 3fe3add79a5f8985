"""May a region's backup bucket hold what the region's nodes hold?

A backup is a copy of every record a node holds, so its bucket must be a place the policy
allows for each of them. The rule (BUCKET_RULE) is checked for every region when the coordinator
starts (it refuses to start), and by a node for the section the topology brings it, at start
(it refuses to start) and at every change (it refuses the section and stops its backups):

- the bucket's location is a configured region (a location the policy knows nothing of is
  refused);
- it is the node's region, or a region in the same country (and subdivision) under the same
  jurisdiction: the law of every data subject decides by country and subdivision
  (domicile.policy.rules), so such a region is allowed exactly where the node's region is;
- every namespace the node's region may hold is also scoped to it, every classification
  rule of the policy pack that lists regions lists it whenever it lists the node's region, and
  the pack records the same facts of both (recipient and transfer mechanisms: the laws decide
  by them too, region by region).
"""

from __future__ import annotations

import dataclasses

from domicile.cluster import BackupSpec, ClusterSpec
from domicile.errors import InvalidArgument
from domicile.policy.pack_model import PolicyPack
from domicile.policy.select import pack_of

BUCKET_RULE = "backup-bucket-in-jurisdiction"


def check_bucket_location(cluster: ClusterSpec, region: str, backup: BackupSpec | None = None) -> None:
    """Raises InvalidArgument naming BUCKET_RULE when region's backup bucket (`backup`, else the
    one the cluster config names) is somewhere the policy does not allow every record the
    region may hold."""
    spec = cluster.region(region)
    if spec is None:
        return
    if backup is not None:
        spec = dataclasses.replace(spec, backup=backup)
    if spec.backup is None:
        return
    where = spec.backup.bucket_region
    bucket = f"backup bucket {spec.backup.bucket} of region {region} (located in {where!r})"
    if where == region:
        return
    located = cluster.region(where)
    if located is None:
        raise _refused(f"{bucket}: {where!r} is not a configured region, so the policy cannot allow it")
    if (located.country, located.jurisdiction) != (spec.country, spec.jurisdiction):
        raise _refused(
            f"{bucket}: {where} is in {located.country or '?'}/{located.jurisdiction or '?'}, the node's "
            f"region in {spec.country or '?'}/{spec.jurisdiction or '?'}; a backup never leaves its "
            "region's country and jurisdiction"
        )
    for namespace in cluster.namespaces:
        if namespace.allows(region) and not namespace.allows(where):
            raise _refused(
                f"{bucket}: namespace {namespace.name} may be held in {region} but not in {where} "
                f"(its scope: {namespace.scope_text()})"
            )
    pack = pack_of(cluster)
    if pack is None:
        return
    home, there = pack.region(region), pack.region(where)
    if home is None or there is None:
        raise _refused(f"{bucket}: the policy pack does not list both {region} and {where}")
    if (home.country, home.subdivision) != (there.country, there.subdivision):
        raise _refused(
            f"{bucket}: the policy pack places {region} in {home.subdivision or home.country} and "
            f"{where} in {there.subdivision or there.country}"
        )
    for rule in pack.classifications.values():
        if rule.regions is not None and region in rule.regions and where not in rule.regions:
            raise _refused(
                f"{bucket}: records classified {rule.classification.name.lower()} may be in {region} "
                f"but not in {where} (policy pack)"
            )
    # The laws also decide by what the pack records of each region by name (its recipient, its
    # transfer mechanisms): two regions of one country may get different answers.
    differing = sorted(_facts(pack, region).symmetric_difference(_facts(pack, where)))
    if differing:
        names = ", ".join(sorted({name for name, _ in differing}))
        raise _refused(
            f"{bucket}: the policy pack records other facts of {where} than of {region} ({names}), "
            "so the laws may refuse there what they allow here"
        )


def _facts(pack: PolicyPack, region: str) -> set[tuple[str, bool]]:
    """The recipient and transfer-mechanism facts the pack records as true of a region, by name
    (a fact recorded false counts as one not recorded: the laws read both as no)."""
    dest = pack.destinations.get(region)
    if dest is None:
        return set()
    facts = {(f"recipient.{name}", True) for name, fact in dest.recipient.items() if fact.value}
    facts.update(
        (f"mechanism.{law}.{kind}", True) for (law, kind), fact in dest.mechanisms.items() if fact.value
    )
    return facts


def _refused(message: str) -> InvalidArgument:
    return InvalidArgument(f"{BUCKET_RULE}: {message}")
