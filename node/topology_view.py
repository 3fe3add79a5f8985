"""The topology a node acts on, and the policy derived from it. Replaced whole on every new
revision, so readers never see a half-applied change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from domicile.policy import PlacementPolicy, ScopePolicy
from domicile.topology import Topology


class TopologyView:
    def __init__(
        self, topology: Topology, policy_factory: Callable[[Topology], PlacementPolicy] | None = None
    ):
        self._policy_factory = policy_factory or (lambda t: ScopePolicy(t.cluster))
        self.topology = topology
        self.policy = self._policy_factory(topology)
        self._changed = asyncio.Event()

    @property
    def revision(self) -> int:
        return self.topology.revision

    def replace(self, topology: Topology) -> bool:
        """Adopts a newer topology; returns False (and changes nothing) for an older or equal one,
        except that revision 0 (built from local configuration) is always replaceable."""
        if topology.revision <= self.topology.revision and self.topology.revision != 0:
            return False
        self.topology = topology
        self.policy = self._policy_factory(topology)
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def wait_changed(self) -> None:
        await self._changed.wait()
