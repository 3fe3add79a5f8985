"""The topology a node acts on, and the policy derived from it. Replaced whole on every new
revision, so readers never see a half-applied change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from domicile.errors import InvalidArgument
from domicile.policy import PlacementPolicy
from domicile.policy.select import policy_for_cluster
from domicile.topology import Topology

log = logging.getLogger("domicile.node.topology")


class TopologyView:
    def __init__(
        self, topology: Topology, policy_factory: Callable[[Topology], PlacementPolicy] | None = None
    ):
        self._policy_factory = policy_factory or (lambda t: policy_for_cluster(t.cluster))
        self.topology = topology
        self.policy = self._policy_factory(topology)
        self._changed = asyncio.Event()

    @property
    def revision(self) -> int:
        return self.topology.revision

    def replace(self, topology: Topology) -> bool:
        """Adopts a newer topology; returns False (and changes nothing) for an older or equal one,
        except that revision 0 (built from local configuration) is always replaceable, and for
        one whose policy pack is invalid."""
        if topology.revision <= self.topology.revision and self.topology.revision != 0:
            return False
        try:
            policy = self._policy_factory(topology)
        except InvalidArgument as exc:
            # Keep enforcing the policy we have rather than none; the coordinator validates
            # packs before it distributes them, so this is a version skew to fix by hand.
            log.error(
                "topology revision %d refused: its policy is invalid: %s", topology.revision, exc.message
            )
            return False
        self.topology = topology
        self.policy = policy
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def wait_changed(self) -> None:
        await self._changed.wait()
