"""Which writers of a shared store the receiver's context check vouches for: each node's current
incarnation (an older one's counters are another writer's, whose later writes a restore may
have lost while a peer still names them)."""

from __future__ import annotations

from node.replication.inbound import _current_incarnations


def test_each_nodes_newest_incarnation_and_this_nodes_own() -> None:
    assert _current_incarnations(["a", "a.5", "a.12", "b", "c.3"], "a.12") == {"a.12", "b", "c.3"}
    # This node writes as a new incarnation the store has no counters of yet.
    assert _current_incarnations(["a.5", "b.2", "b"], "a.7") == {"a.7", "b.2"}
    assert _current_incarnations([], "a") == {"a"}
