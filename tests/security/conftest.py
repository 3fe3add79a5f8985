from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.bearer import token_settings, write_jwks
from tests.support.cluster import LocalCluster, eventually
from tests.support.rogue import ROGUE, ROGUE_REGION


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two EU nodes replicating to each other."""
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1"])
    await cluster.start_linked()
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def pair_and_rogue(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two EU nodes replicating to each other, and the node ROGUE linked to both."""
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1", ROGUE_REGION])
    try:
        await cluster.start_coordinator()
        await cluster.start_node("eu-west-1")
        await cluster.start_node("eu-central-1")
        await cluster.start_node(ROGUE_REGION, node_id=ROGUE)
        await cluster.wait_linked()
        yield cluster
    finally:
        await cluster.stop()


# The namespaces of the module-scoped secure cluster: one owned by the tests' own client (which
# holds every client role), one owned by another service, one limited to declared purposes.
SECURE_NAMESPACES = [
    {"name": "instruments", "regions": "global", "conflict_mode": "lww", "classification": "public"},
    {"name": "customers_eu", "regions": ["eu-west-1", "eu-central-1"], "classification": "personal"},
    {
        "name": "customers",
        "regions": ["eu-west-1", "eu-central-1"],
        "classification": "personal",
        "owner": "crm",
    },
    {
        "name": "trades",
        "regions": ["eu-west-1", "eu-central-1"],
        "classification": "financial",
        "owner": "trading",
        "purposes": ["trade_execution", "settlement"],
    },
]
# A data subject with a record at each EU node: what an export or an erasure would act on.
SUBJECT = "subject-7"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def secure(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    """A coordinator and two linked EU nodes over mutual TLS that also accept bearer tokens, with
    a few records stored; one per test module, so the negative cases cost seconds. Each case
    uses identities of its own, so that what it finds in the audit trail is its own."""
    root = tmp_path_factory.mktemp("secure")
    jwks = write_jwks(root / "jwks.json")
    cluster = LocalCluster(root, ["eu-west-1", "eu-central-1"], namespaces=SECURE_NAMESPACES)
    cluster.node_overrides = token_settings(jwks)
    cluster.coordinator_overrides = {**token_settings(jwks), "jwks": jwks}
    await cluster.start_linked()
    try:
        for region in ("eu-west-1", "eu-central-1"):
            await cluster.put(region, "customers_eu", f"c-{region}", b"record", subject_id=SUBJECT)
            await cluster.put(region, "instruments", f"i-{region}", b"XAU")

        async def replicated() -> bool:
            return all(n.engine.counts().records == 4 for n in cluster.nodes.values())

        # Settled before the first case: each case compares the stores before and after.
        await eventually(replicated, 10.0, "the seeded records at both nodes")
        yield cluster
    finally:
        await cluster.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rogue_linked(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    """pair_and_rogue, one per module: the cases that use it work after whatever position the
    previous case left the rogue source at, on keys of their own."""
    cluster = LocalCluster(
        tmp_path_factory.mktemp("rogue-linked"), ["eu-west-1", "eu-central-1", ROGUE_REGION]
    )
    try:
        await cluster.start_coordinator()
        await cluster.start_node("eu-west-1")
        await cluster.start_node("eu-central-1")
        await cluster.start_node(ROGUE_REGION, node_id=ROGUE)
        await cluster.wait_linked()
        yield cluster
    finally:
        await cluster.stop()
