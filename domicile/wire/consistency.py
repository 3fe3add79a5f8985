"""The consistency check on the wire: CheckConsistencyResponse -> domicile.results."""

from __future__ import annotations

from domicile.results import NamespaceConsistency, PairConsistency
from domicile.v1 import storage_node_pb2 as spb


def pair_consistency_from_pb(msg: spb.CheckConsistencyResponse) -> PairConsistency:
    return PairConsistency(
        node_id=msg.node_id,
        peer_node_id=msg.peer_node_id,
        namespaces=tuple(
            NamespaceConsistency(
                namespace=n.namespace,
                keys=n.keys_compared,
                divergent=n.keys_divergent,
                divergent_keys=tuple(n.divergent_keys),
                repaired=n.keys_repaired,
            )
            for n in msg.namespaces
        ),
    )
