"""A node's certificate used to speak for another node: rogue registrations, address changes,
heartbeats and audit heads at the coordinator, and replication hellos at a node.

Every one is made with a certificate the cluster CA did issue (a stolen node key, or a node that
no longer follows the protocol), so it passes the handshake and only the receiver's checks of
who may say what stand in the way. The coordinator keeps no audit trail of its own: its refusals
are asserted by its refusal counter and its log line with the verified identity, and the
topology (every node's id, region and addresses) must be exactly as before. A node audits its
refusals with the verified identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.tls_files import TlsFiles
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from domicile.wire.audit import head_to_pb
from tests.support.cluster import LocalCluster
from tests.support.negatives import (
    audit_mark,
    coordinator_logged,
    coordinator_refusals,
    denial,
    refused,
    state,
)
from tests.support.tls import CLUSTER

pytestmark = pytest.mark.asyncio(loop_scope="module")
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
ROGUE_ADDRESS = "10.6.6.6:7000"


def node_uri(region: str, node_id: str) -> str:
    return f"spiffe://{CLUSTER}/region/{region}/node/{node_id}"


def impostor(cluster: LocalCluster, directory: Path, region: str, node_id: str) -> Dialer:
    """A CA-issued certificate for `node_id` in `region`, issued directly: the session's
    certificate cache knows one certificate per node id."""
    assert cluster.pki is not None
    pki.issue_node(cluster.pki.ca, region, node_id).write(directory, "impostor")
    files = TlsFiles(cluster.pki.directory / "ca.crt", directory / "impostor.crt", directory / "impostor.key")
    return Dialer.mutual_tls(files)


async def refused_by_coordinator(
    cluster: LocalCluster,
    caplog: pytest.LogCaptureFixture,
    channel: grpc.aio.Channel,
    identity: str,
    rpc: str,
    request: Any,
    *texts: str,
) -> None:
    action = f"coordinator.{rpc}"
    before, counted = state(cluster), coordinator_refusals(cluster, action, "wrong_peer")
    caplog.set_level("WARNING", logger="coordinator.daemon")
    async with channel:
        method = getattr(cpb_grpc.CoordinatorServiceStub(channel), rpc)
        await refused(method(request, timeout=5), PERMISSION_DENIED, *texts)
    assert state(cluster) == before
    assert coordinator_refusals(cluster, action, "wrong_peer") == counted + 1
    coordinator_logged(caplog, action, identity)


async def test_a_node_certificate_may_not_register_a_new_node_id(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    channel = secure.channel_as_node("eu-west-1", secure.coordinator_address)
    request = cpb.RegisterNodeRequest(node_id="eu-west-2", region="eu-west-1", address=ROGUE_ADDRESS)
    await refused_by_coordinator(
        secure,
        caplog,
        channel,
        node_uri("eu-west-1", "eu-west-1"),
        "RegisterNode",
        request,
        "may be called only by node eu-west-2",
    )


async def test_a_node_certificate_may_not_change_another_nodes_address(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack of the finding: re-registering eu-central-1 at the attacker's address, so
    that peers stream their change logs there and clients are routed there."""
    channel = secure.channel_as_node("eu-west-1", secure.coordinator_address)
    request = cpb.RegisterNodeRequest(node_id="eu-central-1", region="eu-central-1", address=ROGUE_ADDRESS)
    await refused_by_coordinator(
        secure,
        caplog,
        channel,
        node_uri("eu-west-1", "eu-west-1"),
        "RegisterNode",
        request,
        "may be called only by node eu-central-1",
    )


async def test_a_certificate_for_the_same_node_id_in_another_region_may_not_register_it(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    channel = impostor(secure, tmp_path, "us-east-1", "eu-central-1").channel(secure.coordinator_address)
    request = cpb.RegisterNodeRequest(node_id="eu-central-1", region="eu-central-1", address=ROGUE_ADDRESS)
    await refused_by_coordinator(
        secure,
        caplog,
        channel,
        node_uri("us-east-1", "eu-central-1"),
        "RegisterNode",
        request,
        "may be called only by node eu-central-1",
    )


async def test_an_existing_node_id_may_not_move_to_another_region(
    secure: LocalCluster, tmp_path: Path
) -> None:
    """The certificate matches the request (us-east-1/eu-central-1), but the node id is taken in
    eu-central-1: moving it would carry its region's data into another jurisdiction."""
    before = state(secure)
    async with impostor(secure, tmp_path, "us-east-1", "eu-central-1").channel(
        secure.coordinator_address
    ) as channel:
        request = cpb.RegisterNodeRequest(node_id="eu-central-1", region="us-east-1", address=ROGUE_ADDRESS)
        await refused(
            cpb_grpc.CoordinatorServiceStub(channel).RegisterNode(request, timeout=5),
            grpc.StatusCode.FAILED_PRECONDITION,
            "is registered in region 'eu-central-1' and cannot move to 'us-east-1'",
        )
    assert state(secure) == before


async def test_a_node_may_not_heartbeat_for_another_node(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    channel = secure.channel_as_node("eu-west-1", secure.coordinator_address)
    await refused_by_coordinator(
        secure,
        caplog,
        channel,
        node_uri("eu-west-1", "eu-west-1"),
        "Heartbeat",
        cpb.HeartbeatRequest(node_id="eu-central-1"),
        "may be called only by node eu-central-1",
    )


async def test_a_node_may_not_export_another_nodes_audit_head(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The head is eu-central-1's own, validly signed; relayed by eu-west-1 it is refused."""
    channel = secure.channel_as_node("eu-west-1", secure.coordinator_address)
    request = cpb.ExportAuditHeadRequest(head=head_to_pb(secure.nodes["eu-central-1"].audit.head()))
    await refused_by_coordinator(
        secure,
        caplog,
        channel,
        node_uri("eu-west-1", "eu-west-1"),
        "ExportAuditHead",
        request,
        "may be called only by node eu-central-1",
    )


async def hello_refused(
    cluster: LocalCluster, channel: grpc.aio.Channel, hello: rpb.ReplicationHello, identity: str, text: str
) -> None:
    target = cluster.nodes["eu-west-1"]
    before, seq = state(cluster), await audit_mark(target)
    async with channel:
        call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=5)
        await call.write(rpb.ReplicateRequest(hello=hello))
        await refused(call.read(), PERMISSION_DENIED, text)
    assert state(cluster) == before
    entry = await denial(target, seq, "replication.Replicate", identity)
    assert entry.rule == "wrong_peer" and text in entry.detail


def hello(source: str, region: str) -> rpb.ReplicationHello:
    return rpb.ReplicationHello(source_node_id=source, source_region=region, target_node_id="eu-west-1")


async def test_a_node_may_not_replicate_as_another_node(secure: LocalCluster) -> None:
    # A linked node (an unlinked one is refused before its hello is read, below).
    channel = secure.channel_as_node("eu-central-1", secure.nodes["eu-west-1"].address)
    text = "may not replicate as node 'us-east-1'"
    await hello_refused(
        secure, channel, hello("us-east-1", "eu-central-1"), node_uri("eu-central-1", "eu-central-1"), text
    )


async def test_a_node_without_a_link_may_not_replicate(secure: LocalCluster) -> None:
    """A node of the cluster's CA that the topology links to nothing here (it is not even running)."""
    channel = secure.channel_as_node("us-east-1", secure.nodes["eu-west-1"].address)
    text = "us-east-1/node/us-east-1 holds no replication link to eu-west-1"
    await hello_refused(
        secure, channel, hello("us-east-1", "us-east-1"), node_uri("us-east-1", "us-east-1"), text
    )


async def test_a_linked_node_may_not_claim_another_region(secure: LocalCluster) -> None:
    channel = secure.channel_as_node("eu-central-1", secure.nodes["eu-west-1"].address)
    text = "claims region 'us-east-1'"
    await hello_refused(
        secure, channel, hello("eu-central-1", "us-east-1"), node_uri("eu-central-1", "eu-central-1"), text
    )
