"""What every negative case of tests/security asserts, in one place: the status code and message,
that nothing changed (stored records, topology, subject requests, legal holds), and the audit
entry the refusing node wrote (or, where no node could write one, that none names the caller).

A node audits each refusal as an `access_denied` entry with the verified identity (the peer
address when there was none). The coordinator keeps no audit trail of its own: its refusals are
counted (domicile_coordinator_authz_refusals_total) and logged, which is what its cases assert.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from domicile.audit import AuditEntry
from node.daemon import Node
from tests.support.cluster import LocalCluster, eventually

ACCESS_DENIED = "access_denied"


@dataclass(frozen=True)
class State:
    """What a refused call must leave exactly as it was."""

    stores: tuple[tuple[str, int, int, int], ...]  # per node: id, last lsn, records, tombstones
    nodes: tuple[tuple[str, str, str, str], ...]  # the coordinator's: id, region, address, metrics
    requests: tuple[tuple[str, str, str], ...]  # data-subject requests: id, kind, state
    holds: tuple[str, ...]


def state(cluster: LocalCluster) -> State:
    stores = []
    for node in sorted(cluster.nodes.values(), key=lambda n: n.config.node_id):
        counts = node.engine.counts()
        stores.append((node.config.node_id, node.engine.last_lsn(), counts.records, counts.tombstones))
    assert cluster.coordinator is not None
    topology = cluster.coordinator.registry.topology()
    desk = cluster.coordinator.desk
    return State(
        stores=tuple(stores),
        nodes=tuple((n.node_id, n.region, n.address, n.metrics_address) for n in topology.nodes),
        requests=tuple((r.request_id, str(r.kind), str(r.state)) for r in desk.list()),
        holds=tuple(h.hold_id for h in desk.holds()),
    )


async def refused(call: Awaitable[Any], code: grpc.StatusCode, *texts: str) -> str:
    """Awaits a call that must fail with `code` and a message holding each of `texts`; the message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    details = caught.value.details() or ""
    assert caught.value.code() == code, (caught.value.code(), details)
    for text in texts:
        assert text in details, details
    return details


async def audit_mark(node: Node) -> int:
    """The audit log's size once every entry recorded or carried so far is durable: the `seq`
    to read a test's own entries after. The size alone may leave an earlier write's carried
    entry (they linger, CARRY_LINGER_S) to be appended after it and counted as the test's."""
    await node.audit.flush()
    return node.audit.size


async def entries_since(node: Node, seq: int) -> list[AuditEntry]:
    """The node's audit entries after `seq`, once every entry recorded so far is durable."""
    await node.audit.flush()
    return [AuditEntry.decode(e.body) for e in node.audit.read(seq, 10_000)]


async def denial(node: Node, seq: int, action: str, principal: str | None = None) -> AuditEntry:
    """The one access_denied entry for `action` the node wrote after `seq`; with `principal`, it
    must name exactly that identity."""
    found = [
        e for e in await entries_since(node, seq) if e.action == ACCESS_DENIED and e.detail.startswith(action)
    ]
    assert len(found) == 1, [(e.principal, e.detail) for e in found]
    (entry,) = found
    assert entry.decision == "refuse" and entry.region == node.config.region
    if principal is not None:
        assert entry.principal == principal, entry.principal
    return entry


async def nothing_names(node: Node, seq: int, *identities: str) -> None:
    """No entry after `seq` attributes anything to any of `identities`, and no call was refused
    at all: what a refusal at the TLS handshake (which never reaches gRPC) leaves in the trail."""
    for entry in await entries_since(node, seq):
        assert entry.action != ACCESS_DENIED, entry
        assert not any(i in entry.principal or i in entry.detail for i in identities), entry


def coordinator_refusals(cluster: LocalCluster, action: str, reason: str) -> float:
    assert cluster.coordinator is not None
    value = cluster.coordinator.metrics.registry.get_sample_value(
        "domicile_coordinator_authz_refusals_total", {"action": action, "reason": reason}
    )
    return value or 0.0


def coordinator_logged(caplog: pytest.LogCaptureFixture, action: str, identity: str) -> None:
    """The coordinator logged the refusal of `action` with the verified identity."""
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith(f"refused {action} for {identity}:")
    ]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


async def replicated(cluster: LocalCluster, namespace: str, key: str) -> None:
    """Waits until every node holds the record: an allowed write in a case has settled before
    the next case compares states."""

    async def everywhere() -> bool:
        return all(n.engine.get(namespace, key) is not None for n in cluster.nodes.values())

    await eventually(everywhere, 10.0, f"{namespace}/{key} at every node")
