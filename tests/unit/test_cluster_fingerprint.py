"""The coordinator publishes a new topology revision when the cluster config's fingerprint
changes; every setting the topology carries must change it."""

from __future__ import annotations

import dataclasses

from coordinator.registry import cluster_fingerprint
from domicile.cluster import ClusterSpec, NamespaceSpec
from domicile.sync_modes import SyncSpec


def cluster(**settings: object) -> ClusterSpec:
    return ClusterSpec(
        namespaces=(dataclasses.replace(NamespaceSpec("profiles", is_global=True), **settings),)
    )


def test_regression_a_schema_only_change_publishes_a_new_revision() -> None:
    """Found by the schema gate's test: a restart whose config changed only a namespace's schema
    kept the old revision, so the nodes kept enforcing the old schema."""
    base = cluster_fingerprint(cluster())
    assert cluster_fingerprint(cluster(json_schema='{"type":"object"}')) != base
    assert cluster_fingerprint(cluster(quality_fields=("email",))) != base
    assert cluster_fingerprint(cluster(siblings_max=3)) != base
    assert cluster_fingerprint(cluster(min_regions_acked=2)) != base
    assert cluster_fingerprint(cluster(sync=SyncSpec("batch", interval_s=60))) != base


def test_defaults_keep_the_fingerprint_a_config_had_before_they_travelled() -> None:
    assert cluster_fingerprint(cluster(siblings_max=16, min_regions_acked=1)) == cluster_fingerprint(
        cluster()
    )
