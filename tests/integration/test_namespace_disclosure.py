"""A caller learns whether a namespace exists only when it may use it: an unknown namespace is
refused like a known one the caller may not use, and NotFound (with the known names) is the
answer only to a caller the policies allow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.authz.loader import DEFAULT_POLICIES, default_text, policy_set_version
from domicile.client import AsyncClient
from domicile.errors import InvalidArgument, NotFound, PermissionDenied
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from tests.support.cluster import LocalCluster, eventually

REGION = "eu-west-1"
NAMESPACES = [
    {"name": "customers", "regions": [REGION], "classification": "personal", "owner": "crm"},
    {"name": "trades", "regions": [REGION], "classification": "financial", "owner": "trading",
     "purposes": ["settlement"]},
]  # fmt: skip


# An operator's own policy set that lets it read everything: the default set and one permit.
EVERYTHING = default_text(DEFAULT_POLICIES) + (
    '\n@id("operator-reads-all")\npermit (principal in Domicile::Role::"operator", '
    'action in Domicile::Action::"record.read", resource);\n'
)


async def started(root: Path, policies: str | None = None) -> LocalCluster:
    """The cluster once its node acts on the coordinator's topology and enforces `policies`
    (None: the default set). A node enforces the set every topology it adopts carries, so a set
    is given the way an operator gives it, in the cluster config: one swapped into the node's
    gate would be replaced at the node's next topology (its first, or one a missed heartbeat
    makes), at a time only the machine's load decides."""
    cluster = LocalCluster(root, [REGION], namespaces=NAMESPACES)
    if policies is not None:
        cluster.set_authz_policies(policies)
    await cluster.start_linked()
    node = cluster.nodes[REGION]
    wanted = policy_set_version(policies) if policies is not None else node.gate.policy_version

    async def enforced() -> bool:
        return node.view.revision > 0 and node.gate.policy_version == wanted

    try:
        await eventually(enforced, 30.0, f"the node enforcing policy set {wanted}")
    except BaseException:
        await cluster.stop()
        raise
    return cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = await started(tmp_path)
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def operator_reads_all(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    cluster = await started(tmp_path, EVERYTHING)
    try:
        yield cluster
    finally:
        await cluster.stop()


def app(cluster: LocalCluster, name: str, purpose: str = "") -> AsyncClient:
    assert cluster.pki is not None
    dialer = Dialer.mutual_tls(cluster.pki.client(name, (Role.APP,)))
    return AsyncClient(cluster.coordinator_address, dialer=dialer, purpose=purpose, deadline_s=5)


async def refusal(client: AsyncClient, namespace: str) -> str:
    with pytest.raises(PermissionDenied) as refused:
        await client.get(namespace, "k", region=REGION)
    return refused.value.message


async def test_regression_an_unknown_namespace_is_refused_like_one_the_caller_may_not_use(
    cluster: LocalCluster,
) -> None:
    async with app(cluster, "intruder") as client:
        known = await refusal(client, "customers")
        unknown = await refusal(client, "customerz")
        limited = await refusal(client, "trades")
    assert unknown.replace("customerz", "NAME") == known.replace("customers", "NAME")
    assert limited.replace("trades", "NAME") == known.replace("customers", "NAME")
    for text in (known, unknown, limited):
        assert "crm" not in text and "trading" not in text and "settlement" not in text
        assert "known namespaces" not in text


async def test_an_allowed_caller_is_told_what_it_may_fix(operator_reads_all: LocalCluster) -> None:
    cluster = operator_reads_all
    # The owner, with the wrong purpose: told the purposes, since it may use the namespace.
    async with app(cluster, "trading", purpose="marketing") as client:
        assert "settlement" in await refusal(client, "trades")
        # A malformed name says nothing of what exists, to anyone of the cluster.
        with pytest.raises(InvalidArgument):
            await client.get("Not A Namespace!", "k", region=REGION)
    # NotFound, with the names, only where the policies allow the call: the operator's own
    # policy set lets it read everything.
    async with cluster.async_client() as operator:
        with pytest.raises(NotFound, match="known namespaces: customers, trades"):
            await operator.get("customerz", "k", region=REGION)
