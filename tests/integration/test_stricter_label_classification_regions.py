"""Regression: A classification the pack confines to regions (`classifications.<c>.regions`) is escaped by
writing the record with a "stricter" label that the pack does not confine.

The node accepts any label at least as strict as the namespace's classification
(node/service.py `_classification`), and the law then judges that label alone
(domicile/policy/select.py `judged_facts` keeps a stricter label as it is). Strictness is a
fixed order of the enum (domicile/model.py STRICTNESS), but the pack's per-classification
region confinement is not monotonic in it: here `confidential` records (business secrets) are
confined to the EU, `personal` ones are not. A confidential namespace's record written with the
label `personal` (and a US-CA subject, no localization) is stored in us-east-1, where the pack
says confidential records may never be.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from domicile.v1 import record_pb2 as pb
from tests.support.cluster import NAMESPACES, LocalCluster
from tests.support.packs import sample_pack

PRICING = {"name": "pricing", "regions": "global", "classification": "confidential"}


async def test_a_stricter_label_does_not_escape_the_namespace_classification_regions(tmp_path: Path) -> None:
    pack = sample_pack()
    pack["version"] = "2026-12-03.confidential-eu"
    pack["classifications"]["confidential"]["regions"] = ["eu-west-1", "eu-central-1"]
    cluster = LocalCluster(tmp_path, ["us-east-1"], pack=pack, namespaces=[*NAMESPACES, PRICING])
    await cluster.start()
    try:
        node = cluster.nodes["us-east-1"]
        # Control: with the namespace's own label the write is refused in us-east-1.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cluster.put("us-east-1", "pricing", "model-1", b"pricing model v1")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "confidential records may only be stored in" in (info.value.details() or "")
        assert node.engine.get("pricing", "model-1") is None

        # The same confidential-namespace record, labelled personal (accepted as "stricter").
        try:
            await cluster.put(
                "us-east-1",
                "pricing",
                "model-2",
                b"pricing model v2",
                classification=pb.CLASSIFICATION_PERSONAL,
                subject_id="trader-1",
                subject_jurisdiction="US-CA",
            )
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        # A record of a namespace whose classification is confined to the EU is stored in the US.
        assert node.engine.get("pricing", "model-2") is None, (
            "a confidential-namespace record was stored in us-east-1, outside the regions the "
            "pack confines confidential records to, by labelling it personal"
        )
    finally:
        await cluster.stop()
