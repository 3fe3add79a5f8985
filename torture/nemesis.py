"""The torture run's faults, drawn from a seeded generator: partitions (symmetric, one-way, a
bridge, one region isolated), latency, loss, connection resets, kill -9 and restart of nodes and
of the coordinator, pauses (SIGSTOP/SIGCONT), and a node restarted with its clock skewed.

One fault is in force at a time, for a drawn duration, then healed, then a drawn quiet gap: a
schedule that a seed replays (the cluster's reaction to it depends on timing, as in any such run).
Every fault applied is logged with its time, so a failing run can be read against its history.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

from bench.procs import ChildError
from torture.clocks import skewed_env
from torture.cluster import COORDINATOR, TortureCluster
from torture.history import History
from torture.rewinds import Rewind, provoked, wait_until, written_since_copy
from torture.router import cut_between

FAULT_KINDS = (
    "partition",
    "one-way",
    "bridge",
    "isolate",
    "latency",
    "loss",
    "reset",
    "kill",
    "kill-coordinator",
    "pause",
    "skew",
    "skew-large",
    "rewind",
)
# `skew-large` restarts a node with its clock minutes to hours off: beyond the drift that peers
# accept, so the node must refuse writes until its clock is right (node.clock_guard).
# `rewind` restarts a node from a copy of its store taken seconds earlier, once its peers hold
# everything it wrote since: the node must find its store behind what it reported and become a
# new incarnation (node.rewind), or it hands out dots again.
# Not in the default schedule: the negative control, a fault the checker must catch.
# `rewind-unchecked` is `rewind` with that check turned off: the node then reuses dots and
# writes are lost.
UNSAFE_KINDS = ("rewind-unchecked",)
# The faults log's event naming (as its detail) the region whose store a rewind put back.
REWOUND_EVENT = "rewound"
# A small skew stays within the drift peers accept (5 s by default).
SMALL_SKEW_S = (0.2, 3.0)
LARGE_SKEW_S = (60.0, 7200.0)
FAULT_S = (1.0, 4.0)
QUIET_S = (0.5, 2.0)
# How long an unchecked rewind waits for the node to acknowledge a write after its copy, and
# after its restart for it to write again a key it wrote since the copy (torture.rewinds).
REWIND_WINDOW_WAIT_S = 30.0


class Nemesis:
    def __init__(
        self,
        cluster: TortureCluster,
        seed: int,
        log_path: Path,
        kinds: tuple[str, ...] = FAULT_KINDS,
        history: History | None = None,
        t0: float = 0.0,
    ) -> None:
        """`history` and `t0` (the monotonic start its times count from): what an unchecked
        rewind reads to take back a write for certain (torture.rewinds)."""
        unknown = set(kinds) - set(FAULT_KINDS) - set(UNSAFE_KINDS)
        if unknown:
            known = ", ".join(FAULT_KINDS + UNSAFE_KINDS)
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {known}")
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.kinds = kinds
        self.injected: Counter[str] = Counter()
        self.history = history
        self.history_t0 = t0
        self.unchecked_rewinds: list[Rewind] = []
        # Regions whose node was put back on an older copy of its data directory: its audit log
        # lost the entries written since the copy (torture.run verify_audit expects that).
        self.rewound: set[str] = set()
        self._log: IO[str] = log_path.open("w")
        self._t0 = time.monotonic()

    def _record(self, event: str, kind: str, detail: str) -> None:
        entry = {"t": round(time.monotonic() - self._t0, 3), "event": event, "kind": kind, "detail": detail}
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await _sleep_or_stop(stop, self.rng.uniform(*QUIET_S)):
                break
            kind = self.rng.choice(self.kinds)
            heal, detail = await self._apply(kind)
            self.injected[kind] += 1
            self._record("start", kind, detail)
            await _sleep_or_stop(stop, self.rng.uniform(*FAULT_S))
            await heal()
            self._record("heal", kind, detail)

    async def heal_everything(self) -> None:
        self.cluster.router.heal()
        await self.cluster.restore_everything()
        self._record("heal", "all", "network healed, every daemon resumed and running")

    async def _apply(self, kind: str) -> tuple[Callable[[], Awaitable[None]], str]:
        cluster = self.cluster
        rules = cluster.router.rules
        nodes = sorted(cluster.nodes)
        everyone = [COORDINATOR, *nodes]

        async def heal_network() -> None:
            cluster.router.heal()

        if kind in ("partition", "isolate"):
            shuffled = self.rng.sample(everyone, len(everyone))
            cut = 1 if kind == "isolate" else self.rng.randrange(1, len(everyone))
            side_a, side_b = shuffled[:cut], shuffled[cut:]
            cut_between(rules, side_a, side_b)
            return heal_network, f"{side_a} | {side_b}"
        if kind == "one-way":
            a, b = self.rng.sample(everyone, 2)
            cut_between(rules, [a], [b], both_ways=False)
            return heal_network, f"{a} -> {b} cut"
        if kind == "bridge":
            a, bridge, b = self.rng.sample(nodes, 3)
            cut_between(rules, [a], [b])
            return heal_network, f"{a} | {b}, bridged by {bridge}"
        if kind in ("latency", "loss"):
            links = [(x, y) for x in everyone for y in everyone if x != y]
            chosen = self.rng.sample(links, self.rng.randrange(1, len(links) + 1))
            for link in chosen:
                if kind == "latency":
                    rules.delay_s[link] = self.rng.uniform(0.02, 0.3)
                else:
                    rules.loss[link] = self.rng.uniform(0.05, 0.3)
            return heal_network, f"{len(chosen)} links"
        if kind == "reset":
            a, b = self.rng.sample(everyone, 2)
            count = cluster.router.reset(a, b)
            return heal_network, f"{a} <-> {b}: {count} connections"
        if kind in ("kill", "kill-coordinator", "pause"):
            daemon = (
                cluster.coordinator if kind == "kill-coordinator" else cluster.nodes[self.rng.choice(nodes)]
            )
            if kind == "pause":
                cluster.pause(daemon)

                async def resume() -> None:
                    cluster.resume(daemon)

                return resume, daemon.name
            await cluster.kill(daemon)

            async def restart() -> None:
                await cluster.start_daemon(daemon)

            return restart, daemon.name
        if kind in ("skew", "skew-large"):
            daemon = cluster.nodes[self.rng.choice(nodes)]
            offset = self.rng.uniform(*(SMALL_SKEW_S if kind == "skew" else LARGE_SKEW_S))
            offset *= self.rng.choice((-1, 1))
            detail = f"{daemon.name} clock {offset:+.1f} s"
            try:
                await cluster.restart_with_env(daemon, skewed_env(offset))
            except ChildError as error:
                # A clock far enough behind makes the node's own certificate not yet valid:
                # it refuses to start, which is the right answer. The heal restarts it.
                detail += f"; it refused to start: {str(error).splitlines()[-1][:200]}"

            async def unskew() -> None:
                await cluster.restart_with_env(daemon, {})

            return unskew, detail
        if kind in ("rewind", "rewind-unchecked"):
            region = self.rng.choice(nodes)
            daemon = cluster.nodes[region]
            await cluster.snapshot(daemon)
            checked = kind == "rewind"
            record = Rewind(region, copied=time.monotonic())

            async def rewind() -> None:
                if checked:
                    # A copy put back loses what only this node held since (no check can bring
                    # that back); what the check must handle is a store behind its peers.
                    await cluster.drain(daemon)
                elif self.history is not None:
                    # The negative control must take back at least one acknowledged write,
                    # however slowly the clients got through on a loaded machine.
                    history = self.history
                    await wait_until(
                        lambda: written_since_copy(history.ops, record, self.history_t0),
                        REWIND_WINDOW_WAIT_S,
                    )
                record.killed = time.monotonic()
                await cluster.kill(daemon)
                cluster.restore_snapshot(daemon)
                self.rewound.add(region)
                self._record(REWOUND_EVENT, kind, region)
                peers = [(region, peer) for peer in nodes if peer != region]
                peer_links = {*peers, *((b, a) for a, b in peers)}
                if not checked:
                    # The copy comes up heard by its clients but not yet by its peers, as a
                    # node restored from a backup may: what its peers hold would otherwise
                    # soon tell it the counters it lost, and whether it hands a dot out again
                    # would be a race against its clients' reconnecting (torture.rewinds).
                    rules.cut.update(peer_links)
                await cluster.start_daemon(daemon, [] if checked else ["--unsafe-no-rewind-check"])
                record.restarted = time.monotonic()
                cluster.router.rules.cut.difference_update(cluster.client_links(daemon))
                if not checked:
                    self.unchecked_rewinds.append(record)
                    if self.history is not None:
                        history = self.history
                        record.provoked = await wait_until(
                            lambda: provoked(history.ops, record, self.history_t0), REWIND_WINDOW_WAIT_S
                        )
                    rules.cut.difference_update(peer_links)

            return rewind, f"{daemon.name} restarts from a copy of its store taken now"
        raise ValueError(f"unknown fault kind {kind!r}")

    def close(self) -> None:
        self._log.close()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps; True when `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
