"""The topology a node acts on, and the policy derived from it. Replaced whole on every new
revision, so readers never see a half-applied change.

The erasure orders and legal holds in force arrive apart from the topology (WatchSubjectOrders),
as whole sets; the view folds the last set into the topology it exposes (`topology.erasures`,
`topology.holds`), so every reader sees one consistent pair."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from domicile.errors import InvalidArgument
from domicile.policy import PlacementPolicy
from domicile.policy.select import policy_for_cluster
from domicile.subjects import SubjectOrders
from domicile.topology import Topology

log = logging.getLogger("domicile.node.topology")


class TopologyView:
    def __init__(
        self, topology: Topology, policy_factory: Callable[[Topology], PlacementPolicy] | None = None
    ):
        self._policy_factory = policy_factory or (lambda t: policy_for_cluster(t.cluster))
        self.topology = topology
        self.policy = self._policy_factory(topology)
        # A topology stored before orders travelled apart may still carry a set: it stands
        # until the first set arrives.
        self.orders = SubjectOrders(0, topology.erasures, topology.holds)
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
        self.topology = dataclasses.replace(topology, erasures=self.orders.erasures, holds=self.orders.holds)
        self.policy = policy
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def adopt_orders(self, orders: SubjectOrders) -> None:
        """Adopts a set of erasure orders and holds, whole. The coordinator's current set is the
        truth even when its revision is lower than the last one (its state was restored), so
        every complete set is adopted."""
        self.orders = orders
        self.topology = dataclasses.replace(self.topology, erasures=orders.erasures, holds=orders.holds)

    async def wait_changed(self) -> None:
        await self._changed.wait()
