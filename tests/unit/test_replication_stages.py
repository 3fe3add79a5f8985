"""A replicated batch's stages (node.replication.stages) are told apart below a millisecond: the
apply's checks, sealing and audit take a fraction of one."""

from __future__ import annotations

from node.metrics import NodeMetrics
from node.replication.stages import Stages


def bucket(metrics: NodeMetrics, stage: str, le: str) -> float:
    value = metrics.registry.get_sample_value(
        "domicile_replication_stage_seconds_bucket", {"link": "a->b", "stage": stage, "le": le}
    )
    assert value is not None, f"no bucket le={le} for stage {stage}"
    return value


def test_sub_millisecond_stages_land_in_buckets_of_their_own() -> None:
    metrics = NodeMetrics("a", "r")
    stages = Stages(metrics, "a", "b")
    stages.observe("check", 0.0002)
    stages.observe("seal", 0.0004)
    stages.observe("commit", 0.0008)
    assert [bucket(metrics, "check", le) for le in ("0.0001", "0.00025", "0.0005", "0.001")] == [0, 1, 1, 1]
    assert [bucket(metrics, "seal", le) for le in ("0.00025", "0.0005")] == [0, 1]
    # Past half a millisecond the lag buckets follow, from 1 ms.
    assert [bucket(metrics, "commit", le) for le in ("0.0005", "0.001")] == [0, 1]
