"""Regression: An export leaves out the subject's records in a namespace the cluster config no longer lists.

The records are still stored (and readable: their data key was not destroyed), the node's own
compliance scan reports them (rule namespace-unknown), an erasure of the subject erases them
(keep_reason finds no class that keeps them), but ExportSubject skips every key whose namespace
the topology does not define (node/lifecycle/export.py: `if spec is None: continue`). The
subject's right of access (GDPR Art. 15) covers every copy held, so the data subject is told
nothing of personal data the store keeps about them."""

from __future__ import annotations

from pathlib import Path

from domicile.v1 import storage_node_pb2 as spb
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack

KEPT = {
    "name": "customers",
    "regions": "global",
    "classification": "personal",
    "retention_class": "user_data",
}
DROPPED = {"name": "sessions", "regions": "global", "classification": "personal", "retention_class": "cache"}


async def test_an_export_includes_records_of_a_namespace_no_longer_configured(tmp_path: Path) -> None:
    pack = sample_pack()
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=pack, namespaces=[KEPT, DROPPED])
    await cluster.start_linked()
    try:
        for namespace, key, value in (("customers", "eva", b"Eva, Graz"), ("sessions", "eva-web", b"token")):
            await cluster.put(
                "eu-west-1", namespace, key, value, subject_id="s-eva", subject_jurisdiction="AT"
            )
        # The operator drops the namespace from the cluster config and restarts the coordinator.
        cluster.namespaces = [KEPT]
        cluster.write_config(pack)
        await cluster.stop_coordinator()
        await cluster.start_coordinator()
        node = cluster.nodes["eu-west-1"]

        async def adopted() -> bool:
            return node.view.topology.cluster.find_namespace("sessions") is None

        await eventually(adopted, 15.0, "the topology without namespace sessions")
        # The record is still held here, and the node itself says so.
        state = node.engine.get("sessions", "eva-web")
        assert state is not None and state.has_live()
        scan = await node.compliance_scan(0, "test")
        assert any(v.namespace == "sessions" and v.key == "eva-web" for v in scan.violations), scan

        exported = {}
        async for response in cluster.stub("eu-west-1").ExportSubject(
            spb.ExportSubjectRequest(subject_id="s-eva"), timeout=10
        ):
            exported.update({(r.namespace, r.key): r for r in response.records})
        assert set(exported) == {("customers", "eva"), ("sessions", "eva-web")}
        dropped = exported[("sessions", "eva-web")]
        assert [v.value for v in dropped.versions] == [b"token"]
        assert "no longer in the cluster configuration" in dropped.legal_basis
    finally:
        await cluster.stop()
