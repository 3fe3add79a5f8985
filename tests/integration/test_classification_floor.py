"""A replicated version labelled looser than its namespace is judged by the namespace's
classification at the receiver: a rogue or misconfigured node cannot land a customer's personal
data in a region the law forbids by calling it public (regression: it was stored there, served
on Get, and the compliance scan reported nothing)."""

from __future__ import annotations

from pathlib import Path

from domicile.v1 import record_pb2 as pb
from tests.support.cluster import NAMESPACES, LocalCluster
from tests.support.node_stream import node_stream
from tests.support.packs import sample_pack, with_fact

CUSTOMERS = {"name": "customers", "regions": "global", "classification": "personal"}
# us-east-1 without its Data Privacy Framework certification: no GDPR personal data there.
NO_DPF = ["destinations", "us-east-1", "recipient", "dpf_certified"]


async def test_a_replicated_record_labelled_public_in_a_personal_namespace_is_refused(tmp_path: Path) -> None:
    pack = with_fact(sample_pack(), "2026-12-03.no-dpf", NO_DPF, False)
    cluster = LocalCluster(
        tmp_path, ["eu-west-1", "us-east-1"], pack=pack, namespaces=[*NAMESPACES, CUSTOMERS]
    )
    await cluster.start()
    try:
        await cluster.wait_linked()
        target = cluster.nodes["us-east-1"]
        async with node_stream(cluster, "eu-west-1", "us-east-1") as stream:
            about_a_customer = {"subject_id": "c-77", "subject_jurisdiction": "FR"}
            mutations = [
                # The namespace says personal: an EU customer's profile, labelled public.
                stream.mutation("customers", "c-77", b"an EU customer's profile", **about_a_customer),
                # Control: the same label in a public namespace is stored.
                stream.mutation("instruments", "FR0000120271", b"TotalEnergies", **about_a_customer),
            ]
            assert all(m.version.classification == pb.CLASSIFICATION_PUBLIC for m in mutations)
            acked = await stream.send(mutations)
        # The batch is acknowledged (the stream goes on) with the record refused, not stored.
        assert acked == stream.lsn
        assert target.engine.get("instruments", "FR0000120271") is not None
        assert target.engine.get("customers", "c-77") is None
        got = await cluster.get("us-east-1", "customers", "c-77")
        assert not got.found
        report = await target.compliance_scan(0, "test")
        assert report.violations_total == 0
    finally:
        await cluster.stop()
