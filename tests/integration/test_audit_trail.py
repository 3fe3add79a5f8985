"""The audit trail end to end: a region's log, its signed head at the coordinator, and
`domicile audit verify` catching each kind of tampering with the file on disk."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import audit_tamper
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack

REGION = "eu-west-1"
CUSTOMERS = {"name": "customers", "regions": "global", "classification": "personal"}


def domicile(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as an operator runs it (a subprocess: the nodes run in this test's loop)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "domicile.cli",
            *args,
            "--coordinator",
            cluster.coordinator_address,
            *cluster.cli_args(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False,
    )


async def verify(cluster: LocalCluster) -> tuple[int, dict[str, Any]]:
    done = await asyncio.to_thread(domicile, cluster, "audit", "verify", "--region", REGION, "--json")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
async def region(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One region with a few audited writes whose head the coordinator has accepted."""
    cluster = LocalCluster(tmp_path, [REGION], pack=sample_pack(), namespaces=[CUSTOMERS])
    await cluster.start()
    try:
        for i in range(6):
            await cluster.put(
                REGION, "customers", f"c-{i}", b"v", subject_id=f"s-{i}", subject_jurisdiction="DE"
            )
        node = cluster.nodes[REGION]
        await node.audit.flush()

        async def anchored() -> bool:
            return node.exporter.exported_size == node.audit.size

        await eventually(anchored, what="the head exported to the coordinator")
        yield cluster
    finally:
        await cluster.stop()


def audit_file(cluster: LocalCluster) -> Path:
    return Path(cluster.node_config(REGION).data_dir) / "audit.sqlite3"


async def test_an_untouched_log_verifies_against_the_exported_head(region: LocalCluster) -> None:
    code, report = await verify(region)
    assert code == 0 and report["verified"] and report["problems"] == []
    assert report["anchored_size"] >= 6
    tail = await asyncio.to_thread(domicile, region, "audit", "tail", "--region", REGION, "-n", "3", "--json")
    assert tail.returncode == 0, tail.stderr
    entries = json.loads(tail.stdout)["entries"]
    assert len(entries) == 3 and entries[-1]["action"] == "audit_read"


# (tampering, the problem verify reports, how the node itself notices: its start-up check of the
# chain, or the coordinator refusing its next head because the log shrank or forked)
TAMPERINGS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "flipped byte": (lambda p: audit_tamper.flip_body_byte(p, 3), "modified", "chain"),
    "deleted entry": (lambda p: audit_tamper.delete_entry(p, 3), "missing", "chain"),
    "reordered entries": (lambda p: audit_tamper.swap_entries(p, 2, 4), "reordered", "chain"),
    "truncated log": (lambda p: audit_tamper.truncate(p, 3), "truncated", "export"),
    "rewritten chain": (lambda p: audit_tamper.rewrite_chain(p, 2, "nothing to see"), "rewritten", "export"),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
async def test_verify_catches_tampering_with_the_file(region: LocalCluster, tampering: str) -> None:
    tamper, kind, noticed_by = TAMPERINGS[tampering]
    # Done with the node stopped, as someone with access to the disk would: the node must not
    # repair or overwrite what was done when it starts again.
    await region.stop_node(REGION)
    tamper(audit_file(region))
    node = await region.start_node(REGION)
    code, report = await verify(region)
    assert code == 1, report
    assert not report["verified"]
    kinds = {p["kind"] for p in report["problems"]}
    assert kind in kinds, report["problems"]

    # The damage shows in metrics without anyone running verify: a broken chain fails the node's
    # start-up check; a consistent but shorter or different chain is refused by the coordinator.
    async def flagged() -> bool:
        sample = node.metrics.registry.get_sample_value
        if noticed_by == "chain":
            return sample("domicile_audit_chain_valid") == 0
        return (sample("domicile_audit_export_refused_total") or 0) >= 1

    await eventually(flagged, what=f"the node noticing by its {noticed_by}")
