"""A replicated version labelled looser than its namespace is judged by the namespace's
classification at the receiver: a rogue or misconfigured node cannot land a customer's personal
data in a region the law forbids by calling it public (regression: it was stored there, served
on Get, and the compliance scan reported nothing)."""

from __future__ import annotations

from pathlib import Path

from domicile.causality import sha256
from domicile.hlc import pack as hlc_pack
from domicile.hlc import wall_ms
from domicile.v1 import record_pb2 as pb
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from tests.support.cluster import NAMESPACES, LocalCluster
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
        channel = cluster.channel_as_node("eu-west-1", target.address)
        try:
            call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=10)
            hello = rpb.ReplicationHello(
                source_node_id="eu-west-1", source_region="eu-west-1", target_node_id="us-east-1"
            )
            await call.write(rpb.ReplicateRequest(hello=hello))
            start = (await call.read()).ready.resume_after_lsn
            now = wall_ms()

            def public(namespace: str, key: str, value: bytes, n: int) -> pb.Mutation:
                m = pb.Mutation(namespace=namespace, key=key, lsn=start + n, origin_node_id="eu-west-1")
                m.version.dot.node_id = "eu-west-1"
                m.version.dot.counter = n
                m.version.value = value
                m.version.checksum_sha256 = sha256(value)
                m.version.hlc = hlc_pack(now, n)
                m.version.classification = pb.CLASSIFICATION_PUBLIC
                m.version.subject_id = "c-77"
                m.version.subject_jurisdiction = "FR"
                m.version.origin_region = "eu-west-1"
                return m

            mutations = [
                # The namespace says personal: an EU customer's profile, labelled public.
                public("customers", "c-77", b"an EU customer's profile", 1),
                # Control: the same label in a public namespace is stored.
                public("instruments", "FR0000120271", b"TotalEnergies", 2),
            ]
            batch = rpb.ReplicationBatch(mutations=mutations, through_lsn=start + 2)
            await call.write(rpb.ReplicateRequest(batch=batch))
            ack = await call.read()
            await call.done_writing()
        finally:
            await channel.close()
        # The batch is acknowledged (the stream goes on) with the record refused, not stored.
        assert ack.ack.applied_through_lsn == start + 2
        assert target.engine.get("instruments", "FR0000120271") is not None
        assert target.engine.get("customers", "c-77") is None
        got = await cluster.get("us-east-1", "customers", "c-77")
        assert not got.found
        report = await target.compliance_scan(0, "test")
        assert report.violations_total == 0
    finally:
        await cluster.stop()
