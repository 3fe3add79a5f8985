"""A link's reconnect delays start over once the target answers: a replication session never
ends without an error, so without the reset every reconnect after a few failures waited the
longest delay for the rest of the process's life."""

from __future__ import annotations

from pathlib import Path

from tests.support.cluster import LocalCluster, eventually


async def test_regression_a_link_that_reconnected_starts_its_delays_over(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1", "eu-central-1"])
    await cluster.start_linked()
    try:
        sender = cluster.nodes["eu-west-1"].replication.senders["eu-central-1"]
        policy = sender.backoff
        for _ in range(12):  # as many failures as it takes to reach the longest delay
            sender.reconnects.next_delay()
        assert sender.reconnects.next_delay() >= policy.max_s * 0.5
        await cluster.stop_node("eu-central-1")
        await cluster.start_node("eu-central-1")

        async def relinked() -> bool:
            return sender.connected

        await eventually(relinked, 30.0, "the link reconnected")
        # The next failure waits the first delay again (full jitter: up to 1.5 x initial).
        assert sender.reconnects.next_delay() <= policy.initial_s * 1.5
    finally:
        await cluster.stop()
