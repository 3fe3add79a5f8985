"""Regression: A Delete without a context deletes every version of the key, but its tombstone takes the
placement facts (subject, jurisdiction, classification) of the newest version alone
(node/service.py `facts_for_delete`). When the siblings are about subjects of different
jurisdictions, the tombstone is placed and replicated as the newest one, and is withheld from a
region that holds an older sibling the law lets it hold: that region goes on serving the record
the client deleted, indefinitely (anti-entropy judges the tombstone by the same facts).

The regression test tests/integration/test_delete_facts.py covers only the Delete *with* a
context; this is the same scenario without one.
"""

from __future__ import annotations

from pathlib import Path

from node.service import DeleteCommand
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack

NAMESPACES = [
    {"name": "customers", "regions": "global", "classification": "personal", "retention_class": "user_data"},
]


async def test_a_delete_without_context_reaches_every_region_holding_a_deleted_version(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1", "us-east-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        west = cluster.nodes["eu-west-1"]
        # s-a's record (DE: may be held in both regions), replicated to us-east-1.
        await cluster.put(
            "eu-west-1", "customers", "k", b"about a", subject_id="s-a", subject_jurisdiction="DE"
        )

        async def arrived() -> bool:
            return await cluster.values("us-east-1", "customers", "k") == {b"about a"}

        await eventually(arrived, 15.0, "s-a's record at us-east-1")
        # A concurrent sibling about s-b (KR: may not be held in us-east-1), written later.
        await cluster.put(
            "eu-west-1", "customers", "k", b"about b", subject_id="s-b", subject_jurisdiction="KR"
        )
        # The client deletes the key: no context, so every version is deleted.
        await west.service.delete(DeleteCommand("customers", "k", principal="tester"))
        assert await cluster.values("eu-west-1", "customers", "k") == set()
        # A later write us-east-1 may hold: once it is there, the stream has passed the delete.
        await cluster.put(
            "eu-west-1", "customers", "marker", b"m", subject_id="s-m", subject_jurisdiction="DE"
        )

        async def marker() -> bool:
            return await cluster.values("us-east-1", "customers", "marker") == {b"m"}

        await eventually(marker, 15.0, "the marker at us-east-1")
        # us-east-1 still serves s-a's record, which the client deleted.
        assert await cluster.values("us-east-1", "customers", "k") == set()
    finally:
        await cluster.stop()
