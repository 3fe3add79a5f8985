"""Authorization policies travel with the topology: the coordinator validates the file its
cluster config names and sends it with every revision, and nodes enforce it without a restart
(keeping the set they have when a received one does not load)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from coordinator.config import CoordinatorConfig
from coordinator.daemon import Coordinator
from domicile.authz.loader import DEFAULT_POLICIES, default_text, policy_set_version
from domicile.cluster import ClusterSpec
from domicile.errors import InvalidArgument
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer, Role
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from tests.support.cluster import LocalCluster, eventually

REGION = "eu-west-1"
DEFAULT = default_text(DEFAULT_POLICIES)
NO_STATUS_FOR_AUDITORS = (
    DEFAULT
    + """
@id("auditors-no-status")
forbid (
  principal in Domicile::Role::"auditor",
  action in Domicile::Action::"status.read",
  resource
);
"""
)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(tmp_path, [REGION])
    cluster.set_authz_policies(DEFAULT)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


async def status_as_auditor(cluster: LocalCluster) -> spb.GetNodeStatusResponse:
    assert cluster.pki is not None
    dialer = Dialer.mutual_tls(cluster.pki.client("status-auditor", (Role.AUDITOR,)))
    async with dialer.channel(cluster.nodes[REGION].address, ExpectedPeer.node(REGION, REGION)) as channel:
        response: spb.GetNodeStatusResponse = await spb_grpc.StorageNodeServiceStub(channel).GetNodeStatus(
            spb.GetNodeStatusRequest(), timeout=5
        )
        return response


async def test_a_policy_changed_at_the_coordinator_changes_a_running_nodes_decision(
    cluster: LocalCluster,
) -> None:
    node = cluster.nodes[REGION]
    status = await status_as_auditor(cluster)
    assert status.authz_policy_version == policy_set_version(DEFAULT)

    cluster.set_authz_policies(NO_STATUS_FOR_AUDITORS)
    await cluster.stop_coordinator()
    await cluster.start_coordinator()

    async def adopted() -> bool:
        return node.gate.policy_version == policy_set_version(NO_STATUS_FOR_AUDITORS)

    await eventually(adopted, 15.0, "the node enforcing the new policy set")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await status_as_auditor(cluster)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "auditors-no-status" in (refused.value.details() or "")
    assert "storage.GetNodeStatus" in (refused.value.details() or "")
    # The same process all along: no restart.
    assert cluster.nodes[REGION] is node
    # What GetNodeStatus answers to those the new set still lets ask.
    status = await node.status()
    assert status.authz_policy_version == policy_set_version(NO_STATUS_FOR_AUDITORS)


async def test_a_received_policy_set_that_does_not_load_leaves_the_one_in_force(
    cluster: LocalCluster,
) -> None:
    node = cluster.nodes[REGION]
    before = node.gate.policy_version
    rejected = node.metrics.authz_policy_rejected._value.get()
    broken = ClusterSpec(authz_policies_text="permit (principal, action,", authz_policies_source="a topology")

    assert node.adopt_authorization(broken) is False

    assert node.gate.policy_version == before
    assert node.metrics.authz_policy_rejected._value.get() == rejected + 1
    status = await status_as_auditor(cluster)
    assert status.authz_policy_version == before


def test_the_coordinator_refuses_to_start_on_a_policy_file_that_does_not_load(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, [REGION])
    cluster.set_authz_policies(
        DEFAULT + '\n@id("broken")\npermit (principal, action == Domicile::Action::"no.Such", resource);\n'
    )
    with pytest.raises(InvalidArgument) as refused:
        Coordinator(
            CoordinatorConfig(
                cluster_config=cluster.config_path, data_dir=tmp_path / "coordinator", insecure=True
            )
        )
    assert str(tmp_path / "authz.cedar") in refused.value.message
    assert "broken" in refused.value.message
