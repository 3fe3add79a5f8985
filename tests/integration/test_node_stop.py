"""Stopping a node while a long job (a compliance scan) still reads its store: the job ends
before the store it reads is closed."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import node.daemon as daemon
from tests.support.cluster import LocalCluster


async def test_regression_stop_waits_for_a_running_scan_before_closing_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scans ran on asyncio's default executor, which stop() did not wait for: the store could
    be closed under a scan that was still reading it."""
    cluster = LocalCluster(tmp_path, ["eu-west-1"])
    await cluster.start()
    node = cluster.nodes["eu-west-1"]
    scanning = threading.Event()
    events: list[str] = []
    real_scan = daemon.scan_store

    def slow_scan(*args, **kwargs):  # type: ignore[no-untyped-def]
        scanning.set()
        time.sleep(1.0)
        report = real_scan(*args, **kwargs)
        events.append("scan done")
        return report

    real_close = node.engine.close

    def close() -> None:
        events.append("store closed")
        real_close()

    monkeypatch.setattr(daemon, "scan_store", slow_scan)
    monkeypatch.setattr(node.engine, "close", close)
    scan = asyncio.create_task(node.compliance_scan(10, "test"))
    await asyncio.to_thread(scanning.wait, 5)
    try:
        await cluster.stop()
    finally:
        scan.cancel()
    assert events == ["scan done", "store closed"]
