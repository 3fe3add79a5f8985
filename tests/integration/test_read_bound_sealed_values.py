"""Regression: A Put is refused for a read bound (read_record_bytes_max) the read it protects would not reach.

node/engine/core.py _build_local weighs the key's live versions *as stored*: a record about a data
subject is stored sealed (node/crypto/envelope.py: ~45 bytes more per version), while Get weighs
the versions it answers, opened (node/service.py get: answer_bytes on the opened versions). So a
sixteenth sibling whose key a Get answers fine is refused FAILED_PRECONDITION ("past the ... bytes
a read answers for one record") -- although the README says the bound is what a read answers.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from domicile.causality import CausalContext
from domicile.model import Limits
from node.engine.base import answer_bytes
from node.service import PutCommand
from tests.support.cluster import LocalCluster

NS = "customers"
NAMESPACES = [
    {"name": NS, "regions": "global", "classification": "personal", "retention_class": "user_data"},
]


async def test_siblings_a_read_answers_are_accepted(tmp_path: Path) -> None:
    limits = Limits()
    cluster = LocalCluster(tmp_path, ["eu-west-1"], namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        service = cluster.nodes["eu-west-1"].service
        siblings_max = service.view.topology.cluster.namespace(NS).siblings_max

        def put(i: int, size: int) -> PutCommand:
            return PutCommand(
                NS,
                "k",
                bytes([65 + i]) * size,
                subject_id="s-a",
                subject_jurisdiction="DE",
                principal="tester",
            )

        # One version first, to learn what a version costs in an answer besides its value.
        await service.put(put(0, 1000))
        one = await service.get(NS, "k", "tester")
        per_version = answer_bytes("k", None, one.versions) - answer_bytes("k", None, ()) - 1000
        fixed = answer_bytes("k", SimpleNamespace(context=one.context), ())
        # The largest value size at which siblings_max siblings still fit what a read answers.
        size = (limits.read_record_bytes_max - fixed) // siblings_max - per_version
        assert size <= limits.value_bytes_max
        await service.put(put(0, size))  # (a sibling of the first; the first is superseded below)
        first = await service.get(NS, "k", "tester")
        small = [v for v in first.versions if len(v.value) == 1000]
        # Replace the small one with a full-size one, superseding it by its context.
        await service.put(
            PutCommand(
                NS,
                "k",
                bytes([66]) * size,
                context=CausalContext.empty().add(small[0].dot),
                subject_id="s-a",
                subject_jurisdiction="DE",
                principal="tester",
            )
        )
        for i in range(2, siblings_max):
            await service.put(put(i, size))
        got = await service.get(NS, "k", "tester")
        assert len(got.versions) == siblings_max
        weight = answer_bytes("k", SimpleNamespace(context=got.context), got.versions)
        # The read answers the key: it is within the bound.
        assert weight <= limits.read_record_bytes_max
    finally:
        await cluster.stop()
