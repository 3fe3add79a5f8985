"""A cache hit is judged like a store read: after the policy tightens, a cached record is
redacted or refused exactly as the store's copy would be."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from domicile.redis_server import RedisServer
from tests.support.cluster import NAMESPACES, LocalCluster, eventually
from tests.support.packs import sample_pack, set_read_refused, with_fact

CUSTOMERS = {"name": "customers", "regions": "global", "classification": "personal"}
DPF = ["destinations", "us-east-1", "recipient", "dpf_certified"]


async def test_a_tightened_policy_redacts_then_refuses_cached_records(
    tmp_path: Path, redis: RedisServer
) -> None:
    cluster = LocalCluster(
        tmp_path, ["eu-west-1", "us-east-1"], pack=sample_pack(), namespaces=[*NAMESPACES, CUSTOMERS]
    )
    await cluster.start_coordinator()
    try:
        await cluster.start_node("eu-west-1")
        us = await cluster.start_node(
            "us-east-1", cache_redis_url=redis.url, cache_redis_region="us-east-1", cache_deadline_ms=1000
        )
        await cluster.wait_linked()
        await cluster.put("eu-west-1", "customers", "de-3", b"profile of de-3", subject_id="s-3",
                          subject_jurisdiction="DE")  # fmt: skip

        async def arrived() -> bool:
            return us.engine.get("customers", "de-3") is not None

        await eventually(arrived, 10.0, "de-3 at us-east-1 (DPF)")

        async def landed() -> bool:
            return us.cache is not None and us.cache.coherence.dirty_count == 0

        await eventually(landed, 10.0, "the apply's invalidation landed")

        def hits() -> float:
            return us.metrics.registry.get_sample_value("domicile_cache_hits_total") or 0.0

        for _ in range(2):
            assert await cluster.values("us-east-1", "customers", "de-3") == {b"profile of de-3"}
        assert hits() == 1

        tightened = with_fact(sample_pack(), "2026-11-27.no-dpf", DPF, False)
        set_read_refused(tightened, "personal", ["value", "subject_id"])
        await cluster.change_policy(tightened)
        got = await cluster.get("us-east-1", "customers", "de-3")
        assert hits() == 2, "answered from the cache"
        (version,) = got.versions
        assert list(version.redacted_fields) == ["value", "subject_id"] and version.value == b""

        await cluster.change_policy(with_fact(sample_pack(), "2026-11-27.no-dpf-refuse", DPF, False))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.get("us-east-1", "customers", "de-3")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert hits() == 3
    finally:
        await cluster.stop()
