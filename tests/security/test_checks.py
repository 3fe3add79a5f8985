"""The checks every negative case relies on fail when they should (negative controls): a state
comparison notices a write, the audit lookup notices a missing or a second refusal, and the
handshake check notices an entry that names the identity."""

from __future__ import annotations

import grpc
import pytest

from domicile.identity.principal import Role
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from tests.support.cluster import LocalCluster
from tests.support.negatives import audit_mark, denial, nothing_names, refused, replicated, state
from tests.support.tls import CLUSTER, TESTER

pytestmark = pytest.mark.asyncio(loop_scope="module")
REGION = "eu-west-1"


async def test_the_state_comparison_notices_a_write(secure: LocalCluster) -> None:
    before = state(secure)
    await secure.put(REGION, "customers_eu", "checks-1", b"x")
    await replicated(secure, "customers_eu", "checks-1")
    assert state(secure) != before


async def test_the_audit_checks_notice_an_allowed_call_and_a_named_identity(secure: LocalCluster) -> None:
    node = secure.nodes[REGION]
    seq = await audit_mark(node)
    await secure.put(REGION, "customers_eu", "checks-2", b"x")
    await replicated(secure, "customers_eu", "checks-2")
    with pytest.raises(AssertionError):
        await denial(node, seq, "storage.Put")
    with pytest.raises(AssertionError):
        await nothing_names(node, seq, f"spiffe://{CLUSTER}/client/{TESTER}")


async def test_the_audit_check_notices_another_principal_and_a_second_refusal(secure: LocalCluster) -> None:
    node = secure.nodes[REGION]
    seq = await audit_mark(node)
    assert secure.pki is not None
    async with secure.pki.dialer("checks-dpo", (Role.DPO,)).channel(node.address) as channel:
        request = spb.PutRequest(namespace="customers_eu", key="checks-3", value=b"x")
        for _ in range(2):
            await refused(
                spb_grpc.StorageNodeServiceStub(channel).Put(request, timeout=5),
                grpc.StatusCode.PERMISSION_DENIED,
            )
    with pytest.raises(AssertionError):
        await denial(node, seq, "storage.Put")
    seq = await audit_mark(node)
    async with secure.pki.dialer("checks-dpo", (Role.DPO,)).channel(node.address) as channel:
        await refused(
            spb_grpc.StorageNodeServiceStub(channel).Put(request, timeout=5),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    with pytest.raises(AssertionError):
        await denial(node, seq, "storage.Put", f"spiffe://{CLUSTER}/client/someone-else")
    await denial(node, seq, "storage.Put", f"spiffe://{CLUSTER}/client/checks-dpo")
