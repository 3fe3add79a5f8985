"""Regression: a node's certificate re-issued in place (a dialer builds its next channels from
changed files) was never presented by anti-entropy, which kept one channel per peer for as long as
the peer's address stayed the same. Since the gate checks a certificate's validity at every call,
once the old certificate expired every anti-entropy round of the node was refused
UNAUTHENTICATED until a restart."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from domicile.identity import audit_key, pki
from tests.support.cluster import LocalCluster
from tests.support.tls import SessionPki

WEST, CENTRAL = "eu-west-1", "eu-central-1"
NS = "customers_eu"
LIFETIME = dt.timedelta(seconds=8)


@pytest.fixture
async def rotated(tmp_path: Path) -> AsyncIterator[tuple[LocalCluster, SessionPki, pki.Validity, bytes]]:
    own = SessionPki()
    now = dt.datetime.now(dt.UTC)
    short = pki.Validity(now - dt.timedelta(minutes=5), now + LIFETIME)
    first = pki.issue_node(own.ca, WEST, WEST, validity=short)
    first.write(own.directory, f"node-{WEST}")
    own._issued.add(f"node-{WEST}")
    key = load_pem_private_key(first.audit_key_pem, None)
    cluster = LocalCluster(tmp_path, [WEST, CENTRAL], pki=own)
    cluster.node_overrides.update(antientropy_interval_s=0)
    await cluster.start_linked()
    try:
        yield cluster, own, short, audit_key.public_bytes(key)  # type: ignore[arg-type]
    finally:
        await cluster.stop()


async def test_anti_entropy_uses_the_rotated_certificate(
    rotated: tuple[LocalCluster, SessionPki, pki.Validity, bytes],
) -> None:
    cluster, own, short, audit_public = rotated
    west = cluster.nodes[WEST]
    peer = west.view.topology.node(CENTRAL)
    assert peer is not None
    before = await west.entropy.compare(peer, NS, repair=False)  # opens the channel to the peer
    # The operator re-issues the node's certificate (same identity, same audit key) in place.
    now = dt.datetime.now(dt.UTC)
    pki.issue_node(
        own.ca,
        WEST,
        WEST,
        validity=pki.Validity(now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)),
        audit_public_key=audit_public,
    ).write(own.directory, f"node-{WEST}")
    # Past the old certificate's notAfter.
    wait = short.not_after + dt.timedelta(seconds=1) - dt.datetime.now(dt.UTC)
    await asyncio.sleep(max(0.0, wait.total_seconds()))
    # The node's files hold a valid certificate: its next anti-entropy round must be served.
    after = await west.entropy.compare(peer, NS, repair=False)
    assert after is not None and before is not None
