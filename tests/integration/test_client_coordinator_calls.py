"""The SDK's calls to the coordinator (regressions): a call that makes something anew is not
retried after an answer that may have been lost, a call and its topology lookup share one
deadline, and a coordinator that does not answer leaves the nodes reachable from the cached
topology."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domicile.client import AsyncClient
from domicile.errors import DomicileError, Unavailable
from domicile.subjects import HoldScope
from tests.support.cluster import LocalCluster
from tests.support.tcp_proxy import TcpProxy


class CoordinatorBehindProxy:
    """An insecure LocalCluster (plaintext, so the proxy can see the request bytes) whose
    coordinator the SDK reaches through a TcpProxy under the test's control."""

    def __init__(self, cluster: LocalCluster, proxy: TcpProxy) -> None:
        self.cluster = cluster
        self.proxy = proxy

    def client(self, **options: object) -> AsyncClient:
        return AsyncClient(self.proxy.address, insecure=True, **options)  # type: ignore[arg-type]


async def _start(tmp_path: Path, regions: list[str]) -> CoordinatorBehindProxy:
    cluster = LocalCluster(tmp_path, regions, insecure=True)
    if regions:
        await cluster.start_linked()
    else:
        await cluster.start_coordinator()
    proxy = TcpProxy(cluster.coordinator_address)
    await proxy.start()
    return CoordinatorBehindProxy(cluster, proxy)


@pytest.fixture
async def one_region(tmp_path: Path) -> AsyncIterator[CoordinatorBehindProxy]:
    it = await _start(tmp_path, ["eu-west-1"])
    try:
        yield it
    finally:
        await it.proxy.stop()
        await it.cluster.stop()


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """A real coordinator (mutual TLS, the tests' all-roles client), no nodes."""
    cluster = LocalCluster(tmp_path, [])
    await cluster.start_coordinator()
    try:
        yield cluster
    finally:
        await cluster.stop()


def _answer_lost_once(desk: object, method: str) -> list[object]:
    """The coordinator carries out the first call of `method` and then fails it with UNAVAILABLE,
    as when the connection breaks after the commit (the same seam test_idempotent_writes uses
    for the node: commit, then raise Unavailable)."""
    original = getattr(desk, method)
    done: list[object] = []

    def commit_then_fail(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        if not done:
            done.append(result)
            raise Unavailable("the answer was lost after the commit")
        return result

    setattr(desk, method, commit_then_fail)
    return done


async def test_place_hold_whose_answer_is_lost_places_one_hold(coordinator: LocalCluster) -> None:
    """Regression: the SDK retried a hold whose answer was lost, placing a second one; the
    caller, told of the second only, released it and left the first in force for good."""
    assert coordinator.coordinator is not None
    first = _answer_lost_once(coordinator.coordinator.desk, "place_hold")
    async with coordinator.async_client() as client:
        with pytest.raises(Unavailable, match="the outcome is unknown"):
            await client.place_hold(HoldScope.SUBJECT, subject_id="s-1", reason="litigation 2026-17")
        holds = await client.holds()
    assert [h.hold_id for h in holds] == [h.hold_id for h in first]  # type: ignore[attr-defined]


async def test_open_access_request_whose_answer_is_lost_opens_one_request(coordinator: LocalCluster) -> None:
    assert coordinator.coordinator is not None
    _answer_lost_once(coordinator.coordinator.desk, "open_access")
    async with coordinator.async_client() as client:
        with pytest.raises(Unavailable, match="the outcome is unknown"):
            await client.open_access_request("s-2", "art. 15 request")
        requests = await client.subject_requests(open_only=True)
        assert len(requests) == 1
        # Negative control: a call that reads is retried as before.
        lost = _answer_lost_once(coordinator.coordinator.desk, "list")
        assert len(await client.subject_requests(open_only=True)) == 1 and lost


async def test_audit_record_stays_within_the_clients_deadline(one_region: CoordinatorBehindProxy) -> None:
    deadline_s = 1.0
    async with one_region.client(deadline_s=deadline_s, topology_ttl_s=0.1) as client:
        await client.topology()  # a cached topology
        await asyncio.sleep(0.2)  # ... that is now past its TTL
        one_region.proxy.delay_s = 30.0  # the coordinator stops answering in time
        started = time.monotonic()
        with pytest.raises(DomicileError):
            await client.audit_record("eu-west-1")
        took = time.monotonic() - started
    assert took < deadline_s * 1.5, f"a call with a {deadline_s} s deadline took {took:.2f} s"


async def test_a_put_succeeds_from_the_cached_topology_while_the_coordinator_does_not_answer(
    one_region: CoordinatorBehindProxy,
) -> None:
    async with one_region.client(deadline_s=2.0, topology_ttl_s=0.1) as client:
        await client.put("prefs_eu", "k-before", b"v")  # topology cached, node reachable
        await asyncio.sleep(0.2)
        one_region.proxy.delay_s = 30.0  # coordinator unresponsive (nodes are fine)
        results = []
        for i in range(2):
            try:
                await client.put("prefs_eu", f"k-{i}", b"v")
                results.append("ok")
            except DomicileError as exc:
                results.append(f"{type(exc).__name__}: {exc.message}")
    assert results == ["ok", "ok"], results
