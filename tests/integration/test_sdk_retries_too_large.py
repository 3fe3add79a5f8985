"""Regression: the Python SDK maps every RESOURCE_EXHAUSTED to ResourceExhausted, which is
`retriable`, so a
request the node refuses for its size (over STORAGE_REQUEST_BYTES_MAX, refused before it is
decoded) is sent again and again: attempts_max times (4 by default) for one call, each a full
copy of the oversized request on the wire, each counted and audited at the node as a refusal of
the caller. Such a refusal can never succeed on a retry. domicile/wire/limits.py also says the
SDK checks these bounds before sending, so the caller should be told without any round trip."""

from __future__ import annotations

import pytest

from domicile.client import BatchRecord
from domicile.errors import DomicileError, InvalidArgument
from domicile.wire.limits import STORAGE_REQUEST_BYTES_MAX
from tests.support.cluster import LocalCluster

REGION = "eu-west-1"
NS = "customers_eu"


def too_large_refusals(eu_node: LocalCluster, action: str) -> float:
    registry = eu_node.nodes[REGION].metrics.registry
    labels = {"action": action, "reason": "too_large"}
    return registry.get_sample_value("domicile_authz_refusals_total", labels) or 0.0


async def test_an_oversized_put_batch_is_sent_at_most_once(eu_node: LocalCluster) -> None:
    records = [BatchRecord(key=f"k-{i:04d}", value=b"x" * 5000) for i in range(1000)]
    async with eu_node.async_client() as client:
        with pytest.raises(DomicileError) as raised:
            await client.put_batch(NS, records)
    sent = too_large_refusals(eu_node, "storage.PutBatch")
    assert isinstance(raised.value, InvalidArgument) and "split the records" in raised.value.message
    assert sent == 0, (
        f"one put_batch call was sent {sent:g} times, each refused as over the "
        f"{STORAGE_REQUEST_BYTES_MAX}-byte request bound ({raised.value.message})"
    )
