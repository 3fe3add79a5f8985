"""Regression: An export of a subject with a few dozen records of the largest value a Put accepts.

The node packs ExportSubject answers EXPORT_BATCH (100) records to a message whatever they
weigh, while one answer may weigh at most the server's send bound (32 MiB). 40 records of a
1,000,000-byte value (each accepted by Put: value_bytes_max is 1 MiB) make one 40 MB answer:
the stream fails and the subject cannot be given their data at all."""

from __future__ import annotations

from pathlib import Path

from tests.support.cluster import LocalCluster
from tests.support.packs import sample_pack

NAMESPACES = [
    {"name": "customers", "regions": "global", "classification": "personal", "retention_class": "user_data"},
]
RECORDS = 40
VALUE_BYTES = 1_000_000


async def test_an_export_of_a_subject_with_large_records_is_delivered(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start()
    try:
        for i in range(RECORDS):
            await cluster.put(
                "eu-west-1", "customers", f"doc-{i:02d}", bytes([65 + i % 26]) * VALUE_BYTES,
                subject_id="s-big", subject_jurisdiction="DE",
            )  # fmt: skip
        async with cluster.async_client() as dpo:
            stream = await dpo.export_subject_region("eu-west-1", "s-big", deadline_s=60)
            copies = [c async for c in stream]
        assert sorted(c.key for c in copies) == [f"doc-{i:02d}" for i in range(RECORDS)]
        assert all(len(c.versions[0].value) == VALUE_BYTES for c in copies)
    finally:
        await cluster.stop()
