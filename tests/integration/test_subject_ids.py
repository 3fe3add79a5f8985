"""Every subject id a record carries can be exported and erased: the rights accept any id a
record may carry, and a write's id is held to a rule (domicile/subjects.py check_subject_text)
inside that. Regression: a Put accepted "Jane\\u00a0Doe" (a no-break space, as a name pasted
from a form carries), and the erasure and the export of that subject were then refused as not
printable: the records could never be erased."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from domicile.v1 import record_pb2 as pb
from domicile.v1 import storage_node_pb2 as spb
from tests.integration.test_subject_rights import NAMESPACES, completed, erase, live
from tests.support.cluster import LocalCluster
from tests.support.node_stream import node_stream
from tests.support.packs import sample_pack

REGION = "eu-west-1"
# A no-break space; a zero-width non-joiner, as Persian names write it.
NAMES = ["Jane\u00a0Doe", "\u0645\u06cc\u200c\u0646\u0627"]
NOT_IDS = ["Jane\nDoe", "Jane\u2028Doe", "Jane\x7fDoe", "Jane\x00Doe", "Jane\u202eDoe"]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [REGION, "eu-central-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def test_a_name_with_a_no_break_space_is_written_exported_and_erased(cluster: LocalCluster) -> None:
    for i, subject in enumerate(NAMES):
        await cluster.put(
            REGION, "customers", f"k{i}", b"profile", subject_id=subject, subject_jurisdiction="DE"
        )
        exported = [
            item
            async for item in cluster.stub(REGION).ExportSubject(
                spb.ExportSubjectRequest(subject_id=subject), timeout=10
            )
        ]
        assert exported, f"nothing exported for {subject!r}"
        order = await erase(cluster, subject)
        await completed(cluster, order.request_id)
        assert not live(cluster, REGION, "customers", f"k{i}")


@pytest.mark.parametrize(
    "subject", NOT_IDS, ids=["newline", "line-separator", "delete", "nul", "right-to-left-override"]
)
async def test_a_write_with_a_control_character_in_its_subject_id_is_refused(
    cluster: LocalCluster, subject: str
) -> None:
    stub = cluster.stub(REGION)
    for call in (
        stub.Put(
            spb.PutRequest(
                namespace="customers", key="k", value=b"v", subject_id=subject, subject_jurisdiction="DE"
            ),
            timeout=5,
        ),
        stub.Delete(
            spb.DeleteRequest(namespace="customers", key="k", subject_id=subject, subject_jurisdiction="DE"),
            timeout=5,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "control characters" in (refused.value.details() or "")
    batch = await stub.PutBatch(
        spb.PutBatchRequest(
            puts=[
                spb.PutRequest(
                    namespace="customers",
                    key="bad",
                    value=b"v",
                    subject_id=subject,
                    subject_jurisdiction="DE",
                ),
                spb.PutRequest(
                    namespace="customers", key="good", value=b"v", subject_id="s-1", subject_jurisdiction="DE"
                ),
            ]
        ),
        timeout=5,
    )
    assert batch.results[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "control characters" in batch.results[0].message
    assert batch.results[1].code == 0
    engine = cluster.nodes[REGION].engine
    assert engine.get("customers", "k") is None and engine.get("customers", "bad") is None


async def test_a_replicated_record_with_a_subject_id_no_write_may_carry_now_is_kept_and_erasable(
    cluster: LocalCluster,
) -> None:
    # Written before the rule, when only the length was checked, at a node that replicates it:
    # refusing it would leave the replicas apart for good, so it is applied, and erased on
    # request like any other record.
    subject = "Jane\nDoe"
    async with node_stream(cluster, "eu-central-1", REGION) as stream:
        legacy = stream.mutation(
            "customers",
            "legacy",
            b"profile",
            classification=pb.CLASSIFICATION_PERSONAL,
            subject_id=subject,
            subject_jurisdiction="DE",
        )
        assert await stream.send([legacy]) == stream.lsn
    assert live(cluster, REGION, "customers", "legacy")
    order = await erase(cluster, subject)
    await completed(cluster, order.request_id)
    assert not live(cluster, REGION, "customers", "legacy")
