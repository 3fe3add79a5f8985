"""Each role calling what the default policies do not allow it, and purpose limitation, against
a running cluster over mutual TLS.

Each caller is a client certificate of its own with the one role the case is about, so the
refusal can only come from that role. A node refuses with PERMISSION_DENIED naming the action
and what would allow it, stores nothing, and audits the refusal with the caller's verified
identity. The coordinator keeps no audit trail of its own: its refusals are asserted by its
refusal counter and its log line, which name the verified identity.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from domicile.v1 import subject_pb2 as sjpb
from domicile.wire.audit import head_to_pb
from tests.security.conftest import SUBJECT
from tests.support.cluster import LocalCluster
from tests.support.negatives import (
    audit_mark,
    coordinator_logged,
    coordinator_refusals,
    denial,
    refused,
    replicated,
    state,
)
from tests.support.tls import CLUSTER, TESTER

pytestmark = pytest.mark.asyncio(loop_scope="module")
REGION = "eu-west-1"
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


def uri(name: str) -> str:
    return f"spiffe://{CLUSTER}/client/{name}"


def dialer(cluster: LocalCluster, name: str, *roles: Role) -> Dialer:
    assert cluster.pki is not None
    return cluster.pki.dialer(name, roles)


async def node_call(
    cluster: LocalCluster,
    name: str,
    roles: tuple[Role, ...],
    rpc: str,
    request: Any,
    *texts: str,
    purpose: str = "",
    hidden: str = "",
) -> None:
    """Calls `rpc` of eu-west-1's storage service as client `name` with `roles`; it must be
    refused, change nothing, and be audited under that client's identity. `hidden`: what the
    refusal must not tell the caller."""
    node = cluster.nodes[REGION]
    before, seq = state(cluster), await audit_mark(node)
    metadata = (("domicile-purpose", purpose),) if purpose else ()
    async with dialer(cluster, name, *roles).channel(node.address) as channel:
        method = getattr(spb_grpc.StorageNodeServiceStub(channel), rpc)
        call = method(request, metadata=metadata, timeout=5)
        if hasattr(call, "__aiter__"):
            message = await refused(_drain(call), PERMISSION_DENIED, *texts)
        else:
            message = await refused(call, PERMISSION_DENIED, *texts)
    assert not hidden or hidden not in message, message
    assert state(cluster) == before
    entry = await denial(node, seq, f"storage.{rpc}", uri(name))
    assert entry.rule == "policy"
    assert texts[0] in entry.detail


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def coordinator_call(
    cluster: LocalCluster,
    caplog: pytest.LogCaptureFixture,
    channel: grpc.aio.Channel,
    identity: str,
    rpc: str,
    request: Any,
    reason: str,
    *texts: str,
) -> None:
    """Calls `rpc` of the coordinator on `channel`; it must be refused, change nothing, and be
    counted and logged under `identity`."""
    action = f"coordinator.{rpc}"
    before, counted = state(cluster), coordinator_refusals(cluster, action, reason)
    caplog.set_level("WARNING", logger="coordinator.daemon")
    async with channel:
        method = getattr(cpb_grpc.CoordinatorServiceStub(channel), rpc)
        await refused(method(request, timeout=5), PERMISSION_DENIED, *texts)
    assert state(cluster) == before
    assert coordinator_refusals(cluster, action, reason) == counted + 1
    coordinator_logged(caplog, action, identity)


def as_client(cluster: LocalCluster, name: str, *roles: Role) -> grpc.aio.Channel:
    return dialer(cluster, name, *roles).channel(cluster.coordinator_address)


# ---- app


async def test_an_app_may_not_export_a_subject(secure: LocalCluster) -> None:
    request = spb.ExportSubjectRequest(subject_id=SUBJECT)
    await node_call(secure, "app-export", (Role.APP,), "ExportSubject", request, "allowed for roles: dpo")


async def test_an_app_may_not_read_the_audit_log(secure: LocalCluster) -> None:
    request = spb.ReadAuditLogRequest()
    await node_call(secure, "app-audit", (Role.APP,), "ReadAuditLog", request, "allowed for roles: auditor")


async def test_an_app_may_not_read_another_owners_namespace(secure: LocalCluster) -> None:
    request = spb.GetRequest(namespace="customers", key="c-1")
    # Who owns the namespace is not the caller's business: the refusal does not say (the audit
    # entry, for the operator, does).
    texts = ("may not call storage.Get on namespace", "no policy allows it")
    await node_call(secure, "app-other", (Role.APP,), "Get", request, *texts, hidden="crm")


async def test_an_app_may_not_write_another_owners_namespace(secure: LocalCluster) -> None:
    request = spb.PutRequest(namespace="customers", key="c-1", value=b"x")
    texts = ("may not call storage.Put on namespace", "no policy allows it")
    await node_call(secure, "app-other-w", (Role.APP,), "Put", request, *texts, hidden="crm")


async def test_an_app_may_not_erase_a_subject(secure: LocalCluster, caplog: pytest.LogCaptureFixture) -> None:
    request = cpb.EraseSubjectRequest(subject_id=SUBJECT, reason="asked")
    channel = as_client(secure, "app-erase", Role.APP)
    await coordinator_call(
        secure, caplog, channel, uri("app-erase"), "EraseSubject", request, "policy", "allowed for roles: dpo"
    )


async def test_an_app_may_not_place_a_legal_hold(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    request = cpb.PlaceLegalHoldRequest(
        scope=sjpb.LEGAL_HOLD_SCOPE_SUBJECT, subject_id=SUBJECT, reason="litigation 42"
    )
    channel = as_client(secure, "app-hold", Role.APP)
    await coordinator_call(
        secure,
        caplog,
        channel,
        uri("app-hold"),
        "PlaceLegalHold",
        request,
        "policy",
        "allowed for roles: dpo",
    )


async def test_an_app_may_not_list_legal_holds(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    channel = as_client(secure, "app-holds", Role.APP)
    await coordinator_call(
        secure,
        caplog,
        channel,
        uri("app-holds"),
        "ListLegalHolds",
        cpb.ListLegalHoldsRequest(),
        "policy",
        "allowed for roles: dpo",
    )


async def test_an_app_may_not_read_audit_heads(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    channel = as_client(secure, "app-heads", Role.APP)
    request = cpb.GetAuditHeadRequest(region=REGION)
    await coordinator_call(
        secure,
        caplog,
        channel,
        uri("app-heads"),
        "GetAuditHead",
        request,
        "policy",
        "allowed for roles: auditor",
    )


# ---- auditor, operator, dpo


async def test_an_auditor_may_not_write(secure: LocalCluster) -> None:
    request = spb.PutRequest(namespace="customers_eu", key="auditor-w", value=b"x")
    await node_call(secure, "auditor-put", (Role.AUDITOR,), "Put", request, "may not call storage.Put")


async def test_an_auditor_may_not_export_a_subject(secure: LocalCluster) -> None:
    request = spb.ExportSubjectRequest(subject_id=SUBJECT)
    await node_call(
        secure, "auditor-export", (Role.AUDITOR,), "ExportSubject", request, "allowed for roles: dpo"
    )


async def test_an_operator_may_not_write(secure: LocalCluster) -> None:
    request = spb.PutRequest(namespace="customers_eu", key="operator-w", value=b"x")
    await node_call(secure, "operator-put", (Role.OPERATOR,), "Put", request, "may not call storage.Put")


async def test_an_operator_may_not_export_a_subject(secure: LocalCluster) -> None:
    request = spb.ExportSubjectRequest(subject_id=SUBJECT)
    await node_call(
        secure, "operator-export", (Role.OPERATOR,), "ExportSubject", request, "allowed for roles: dpo"
    )


async def test_an_operator_may_not_erase_a_subject(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    request = cpb.EraseSubjectRequest(subject_id=SUBJECT, reason="asked")
    channel = as_client(secure, "operator-erase", Role.OPERATOR)
    await coordinator_call(
        secure,
        caplog,
        channel,
        uri("operator-erase"),
        "EraseSubject",
        request,
        "policy",
        "allowed for roles: dpo",
    )


async def test_an_auditor_may_not_remove_a_node(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    channel = as_client(secure, "auditor-remove", Role.AUDITOR)
    await coordinator_call(
        secure,
        caplog,
        channel,
        uri("auditor-remove"),
        "RemoveNode",
        cpb.RemoveNodeRequest(node_id=REGION),
        "policy",
        "allowed for roles: operator",
    )
    # Nothing changed: the node is still in the topology.
    assert secure.coordinator is not None
    assert secure.coordinator.registry.topology().node(REGION) is not None


async def test_a_dpo_may_not_write(secure: LocalCluster) -> None:
    """The default policies give a DPO the data-subject rights, not the records themselves."""
    request = spb.PutRequest(namespace="customers_eu", key="dpo-w", value=b"x")
    await node_call(secure, "dpo-put", (Role.DPO,), "Put", request, "may not call storage.Put")


async def test_a_dpo_may_not_read_node_status(secure: LocalCluster) -> None:
    request = spb.GetNodeStatusRequest()
    texts = ("allowed for roles: app, auditor, operator",)
    await node_call(secure, "dpo-status", (Role.DPO,), "GetNodeStatus", request, *texts)


# ---- clients calling what only nodes may


async def hello_refused(
    cluster: LocalCluster,
    channel: grpc.aio.Channel,
    hello: rpb.ReplicationHello,
    identity: str,
    reason: str,
    text: str,
) -> None:
    target = cluster.nodes[REGION]
    before, seq = state(cluster), await audit_mark(target)
    async with channel:
        call = rpb_grpc.ReplicationServiceStub(channel).Replicate(timeout=5)

        async def hello_then_answer() -> Any:
            # The node refuses the stream as it opens: the refusal may end the call before the
            # hello is written, and then the write is what reports it.
            await call.write(rpb.ReplicateRequest(hello=hello))
            return await call.read()

        await refused(hello_then_answer(), PERMISSION_DENIED, text)
    assert state(cluster) == before
    entry = await denial(target, seq, "replication.Replicate", identity)
    assert entry.rule == reason and text in entry.detail


def hello_from(source: str) -> rpb.ReplicationHello:
    return rpb.ReplicationHello(source_node_id=source, source_region=source, target_node_id=REGION)


async def test_a_client_certificate_may_not_open_a_replication_stream(secure: LocalCluster) -> None:
    """The tests' own client, with every client role, presenting itself as node eu-central-1."""
    channel = secure.channel(secure.nodes[REGION].address)
    text = "may not call replication.Replicate at region eu-west-1; allowed for roles: node"
    await hello_refused(secure, channel, hello_from("eu-central-1"), uri(TESTER), "policy", text)


async def test_a_client_may_not_register_a_node(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator holds every client role here, and still cannot move a node's address."""
    request = cpb.RegisterNodeRequest(node_id="eu-central-1", region="eu-central-1", address="10.6.6.6:1")
    await coordinator_call(
        secure,
        caplog,
        secure.coordinator_channel(),
        uri(TESTER),
        "RegisterNode",
        request,
        "wrong_peer",
        "may be called only by node eu-central-1",
    )


async def test_a_client_may_not_send_a_heartbeat(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    request = cpb.HeartbeatRequest(node_id="eu-central-1")
    await coordinator_call(
        secure,
        caplog,
        secure.coordinator_channel(),
        uri(TESTER),
        "Heartbeat",
        request,
        "wrong_peer",
        "may be called only by node eu-central-1",
    )


async def test_a_client_may_not_export_an_audit_head(
    secure: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Even a node's own validly signed head, relayed by a client."""
    request = cpb.ExportAuditHeadRequest(head=head_to_pb(secure.nodes["eu-central-1"].audit.head()))
    await coordinator_call(
        secure,
        caplog,
        secure.coordinator_channel(),
        uri(TESTER),
        "ExportAuditHead",
        request,
        "wrong_peer",
        "may be called only by node eu-central-1",
    )


# ---- nodes calling what only clients may


async def test_a_node_may_not_read_records(secure: LocalCluster) -> None:
    """Replication is how a node gets records; the storage API is for clients."""
    node = secure.nodes[REGION]
    before, seq = state(secure), await audit_mark(node)
    async with secure.channel_as_node("eu-central-1", node.address) as channel:
        call = spb_grpc.StorageNodeServiceStub(channel).Get(
            spb.GetRequest(namespace="customers_eu", key="c-eu-west-1"), timeout=5
        )
        await refused(call, PERMISSION_DENIED, "may not call storage.Get")
    assert state(secure) == before
    await denial(node, seq, "storage.Get", f"spiffe://{CLUSTER}/region/eu-central-1/node/eu-central-1")


# ---- purpose limitation


async def test_a_write_for_an_undeclared_purpose_is_refused_and_audited(secure: LocalCluster) -> None:
    request = spb.PutRequest(namespace="trades", key="t-marketing", value=b"100 XAU")
    texts = (
        "may not call storage.Put on namespace trades at eu-west-1: refused by purpose-limitation",
        "namespace trades may be used for: trade_execution, settlement",
    )
    await node_call(secure, "trading", (Role.APP,), "Put", request, *texts, purpose="marketing")


async def test_a_read_for_an_undeclared_purpose_is_refused_and_audited(secure: LocalCluster) -> None:
    request = spb.GetRequest(namespace="trades", key="t-1")
    texts = ("refused by purpose-limitation", "namespace trades may be used for: trade_execution, settlement")
    await node_call(secure, "trading", (Role.APP,), "Get", request, *texts, purpose="analytics")


async def test_a_call_declaring_no_purpose_is_refused_where_the_namespace_lists_purposes(
    secure: LocalCluster,
) -> None:
    request = spb.PutRequest(namespace="trades", key="t-none", value=b"1")
    await node_call(secure, "trading", (Role.APP,), "Put", request, "refused by purpose-limitation")


async def test_the_owner_writes_for_a_declared_purpose(secure: LocalCluster) -> None:
    """The control of the purpose cases: the same caller, namespace and call, with a listed purpose."""
    node = secure.nodes[REGION]
    async with dialer(secure, "trading", Role.APP).channel(node.address) as channel:
        await spb_grpc.StorageNodeServiceStub(channel).Put(
            spb.PutRequest(namespace="trades", key="t-ok", value=b"1"),
            metadata=(("domicile-purpose", "settlement"),),
            timeout=5,
        )
    await replicated(secure, "trades", "t-ok")
