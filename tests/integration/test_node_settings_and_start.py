"""The node daemon's settings, start and clock gauge (regressions): settings that would misbehave
later are refused at start, a start that fails once the node is built leaves nothing running,
and the gauge the clock page reads follows the refusals between the coordinator's answers."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import grpc
import pytest

from domicile.errors import InvalidArgument, Unavailable
from domicile.hlc import HybridClock, wall_ms
from node.config import NodeConfig
from node.daemon import Node
from tests.support.cluster import LocalCluster, eventually

TEN_MINUTES_MS = 600_000


def _gauge(node: Node, name: str) -> float | None:
    return node.metrics.registry.get_sample_value(name, {"node": node.config.node_id})


async def test_clock_refusing_gauge_follows_refusals_while_the_coordinator_is_away(tmp_path: Path) -> None:
    """Regression: the gauge moved only when a clock sample came with the coordinator's answers,
    so a node whose clock jumped ahead while the coordinator was away refused every write while
    DomicileClockAhead (which reads the gauge) stayed quiet."""
    offset_ms = [0]
    cluster = LocalCluster(tmp_path, ["eu-west-1"], insecure=True)
    await cluster.start()
    await cluster.stop_node("eu-west-1")
    node = await cluster.start_node("eu-west-1", hlc=HybridClock(lambda: wall_ms() + offset_ms[0]))
    try:

        async def sampled() -> bool:
            return node.link.connected and node.clock_guard.ahead_ms() is not None

        await eventually(sampled, 10, "a clock sample from the coordinator")
        await cluster.put("eu-west-1", "prefs_eu", "k", b"before")
        assert _gauge(node, "domicile_clock_refusing_writes") == 0

        # The coordinator goes away; then the node's wall clock jumps ten minutes ahead.
        await cluster.stop_coordinator()
        offset_ms[0] = TEN_MINUTES_MS
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cluster.put("eu-west-1", "prefs_eu", "k", b"while ahead")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # writes ARE refused ...
        await asyncio.sleep(3.0)  # several heartbeat intervals
        assert node.clock_guard.refusal() is not None
        # ... but the series the DomicileClockAhead page reads still says "not refusing".
        assert _gauge(node, "domicile_clock_refusing_writes") == 1, (
            "node refuses every write (clock 600 s ahead) but domicile_clock_refusing_writes = "
            f"{_gauge(node, 'domicile_clock_refusing_writes')}, "
            f"domicile_clock_ahead_seconds = {_gauge(node, 'domicile_clock_ahead_seconds')}"
        )
    finally:
        await cluster.stop()


def _config(tmp_path: Path, **overrides: object) -> NodeConfig:
    return NodeConfig(region="eu-west-1", data_dir=str(tmp_path / "n"), insecure=True, **overrides)  # type: ignore[arg-type]


def test_zero_delays_are_refused_at_start(tmp_path: Path) -> None:
    """Regression: a zero reconnect delay made every retry loop spin while a peer or the
    coordinator was down (doubling 0 stays 0), and a zero ack-persist interval spun too."""
    for bad in (
        {"reconnect_delay_s": 0},
        {"reconnect_delay_s": -1},
        {"reconnect_delay_s": 2.0, "reconnect_delay_max_s": 1.0},
        {"ack_persist_interval_s": 0},
    ):
        with pytest.raises(InvalidArgument, match=r"reconnect_delay_s|ack_persist_interval_s"):
            _config(tmp_path, **bad)
    # Negative control: positive delays, the cap above the first, are taken.
    assert _config(tmp_path, reconnect_delay_s=0.01, reconnect_delay_max_s=0.02).reconnect_delay_s == 0.01


def test_out_of_range_metrics_port_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="metrics_port"):
        _config(tmp_path, metrics_port=70000)
    assert _config(tmp_path, metrics_port=-1).metrics_port == -1  # any free port


def test_unknown_log_level_is_refused_by_the_config(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="log_level"):
        _config(tmp_path, log_level="VERBOSE")
    assert _config(tmp_path, log_level="debug").log_level == "debug"


async def test_a_start_that_fails_at_the_metrics_port_leaves_nothing_running(tmp_path: Path) -> None:
    """Regression: a metrics port in use failed the start with a bare OSError after the gRPC
    server had started, leaving it listening and every writer thread running (and `python -m
    node` printed a traceback)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        node = Node(_config(tmp_path, listen="127.0.0.1:0", metrics_port=port, coordinator="127.0.0.1:1"))
        before = {t.ident for t in threading.enumerate()}
        with pytest.raises(Unavailable, match="cannot serve metrics"):
            await node.start()
    # The node's threads (gRPC's and asyncio's own pools outlive any one server).
    ours = [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and t.is_alive() and t.name.startswith(("domicile", "checkpoint", "hlc"))
    ]
    assert ours == [], ours
    with socket.socket() as probe:
        probe.settimeout(1)
        assert probe.connect_ex(("127.0.0.1", int(node.address.rpartition(":")[2]))) != 0
