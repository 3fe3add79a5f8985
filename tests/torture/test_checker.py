"""The torture checker on hand-made histories: each rule holds on a good history and fires on a
history broken in exactly that way (its negative control)."""

from __future__ import annotations

from torture.checker import Findings, check
from torture.history import Dot, Op, Seen

NS = "t_siblings"
LWW = "t_lww"
REGIONS = ("eu-west-1", "eu-central-1")


def write(
    op_id: int,
    value: str,
    dot: Dot,
    *,
    read: Seen | None = None,
    outcome: str = "ok",
    hlc: int = 0,
    namespace: str = NS,
    region: str = "eu-west-1",
) -> Op:
    return Op(
        op_id, "client-0", region, "rmw" if read is not None else "write", namespace, "k", 0.0, 1.0,
        outcome, value, read, dot if outcome == "ok" else None, hlc,
    )  # fmt: skip


def delete(op_id: int, read: Seen, dot: Dot) -> Op:
    return Op(op_id, "client-0", "eu-west-1", "delete", NS, "k", 0.0, 1.0, "ok", "", read, dot)


def replicas(*live: tuple[Dot, str, int], namespace: str = NS) -> dict[str, dict[str, dict[str, Seen]]]:
    return {namespace: {"k": {region: Seen(live=list(live)) for region in REGIONS}}}


def findings(ops: list[Op], final: dict[str, dict[str, dict[str, Seen]]]) -> Findings:
    return check(ops, final, REGIONS, lww_namespaces=[LWW])


def test_concurrent_blind_writes_both_live_is_correct() -> None:
    ops = [write(1, "a", ("n1", 1)), write(2, "b", ("n2", 1))]
    result = findings(ops, replicas((("n1", 1), "a", 0), (("n2", 1), "b", 0)))
    assert result.ok, result
    assert result.acknowledged_writes == 2 and result.max_siblings == 2


def test_a_write_missing_everywhere_is_lost() -> None:
    ops = [write(1, "a", ("n1", 1)), write(2, "b", ("n2", 1))]
    result = findings(ops, replicas((("n2", 1), "b", 0)))
    assert [(x["op"], x["region"]) for x in result.lost] == [(1, "eu-central-1"), (1, "eu-west-1")]


def test_a_write_superseded_by_a_writer_that_read_it_is_not_lost() -> None:
    saw_a = Seen(vv={"n1": 1}, live=[(("n1", 1), "a", 0)])
    ops = [write(1, "a", ("n1", 1)), write(2, "b", ("n1", 2), read=saw_a)]
    assert findings(ops, replicas((("n1", 2), "b", 0))).ok


def test_a_write_of_unknown_outcome_that_read_it_may_have_superseded_it() -> None:
    # It committed after all: every replica holds its version, whose context covers "a".
    saw_a = Seen(vv={"n1": 1})
    ops = [write(1, "a", ("n1", 1)), write(2, "b", ("n1", 2), read=saw_a, outcome="info")]
    final = {NS: {"k": {region: Seen(vv={"n1": 2}, live=[(("n1", 2), "b", 0)]) for region in REGIONS}}}
    result = findings(ops, final)
    assert not result.lost


def test_a_superseded_version_that_is_live_again_is_a_resurrection() -> None:
    saw_a = Seen(vv={"n1": 1})
    ops = [write(1, "a", ("n1", 1)), delete(2, saw_a, ("n1", 2))]
    assert findings(ops, replicas()).ok
    result = findings(ops, replicas((("n1", 1), "a", 0)))
    assert [x["superseded_by"] for x in result.resurrected] == [2, 2]


def test_a_value_nobody_wrote_is_a_phantom() -> None:
    result = findings([write(1, "a", ("n1", 1))], replicas((("n1", 1), "a", 0), (("n2", 7), "zzz", 0)))
    assert {x["value"] for x in result.phantoms} == {"zzz"}


def test_two_writes_given_one_dot_is_dot_reuse() -> None:
    # What a node restored from an old copy of its store does: it hands out a dot again, and
    # the replicas that had the first write drop the second as a duplicate.
    ops = [write(1, "a", ("n1", 1)), write(2, "b", ("n1", 1))]
    result = findings(ops, replicas((("n1", 1), "a", 0)))
    assert result.dot_reuse and result.lost


def test_replicas_that_differ_are_divergent() -> None:
    ops = [write(1, "a", ("n1", 1))]
    final = {NS: {"k": {"eu-west-1": Seen(live=[(("n1", 1), "a", 0)]), "eu-central-1": Seen()}}}
    result = findings(ops, final)
    assert len(result.divergent) == 1 and len(result.lost) == 1


def test_lww_a_write_ordered_before_the_winner_is_not_lost() -> None:
    ops = [write(1, "a", ("n1", 1), hlc=10, namespace=LWW), write(2, "b", ("n2", 1), hlc=20, namespace=LWW)]
    assert findings(ops, replicas((("n2", 1), "b", 20), namespace=LWW)).ok


def test_lww_a_winner_ordered_before_an_acknowledged_write_means_that_write_is_lost() -> None:
    ops = [write(1, "a", ("n1", 1), hlc=10, namespace=LWW), write(2, "b", ("n2", 1), hlc=20, namespace=LWW)]
    result = findings(ops, replicas((("n1", 1), "a", 10), namespace=LWW))
    assert {x["op"] for x in result.lost} == {2}


def test_lww_ties_on_the_clock_are_broken_by_node_id() -> None:
    ops = [write(1, "a", ("n1", 1), hlc=10, namespace=LWW), write(2, "b", ("n2", 1), hlc=10, namespace=LWW)]
    assert findings(ops, replicas((("n2", 1), "b", 10), namespace=LWW)).ok
    assert findings(ops, replicas((("n1", 1), "a", 10), namespace=LWW)).lost


def test_placed_namespaces_look_for_a_write_only_where_it_was_acknowledged() -> None:
    ops = [write(1, "a", ("eu-west-1", 1), namespace="t_people")]
    final = {"t_people": {"k": {"eu-west-1": Seen(live=[(("eu-west-1", 1), "a", 0)]), "us-east-1": Seen()}}}
    regions = ("eu-west-1", "us-east-1")
    assert check(ops, final, regions, placed_namespaces=["t_people"]).ok
    assert not check(ops, final, regions).ok
    moved = {"t_people": {"k": {"us-east-1": Seen(live=[(("eu-west-1", 1), "a", 0)])}}}
    assert check(ops, moved, regions, placed_namespaces=["t_people"]).lost


def test_a_key_no_replica_returned_is_empty_everywhere() -> None:
    # A write lost on every replica leaves no key to read: the checker must still see it.
    result = findings([write(1, "a", ("n1", 1))], {})
    assert len(result.lost) == len(REGIONS)


def test_failed_writes_are_not_expected_anywhere() -> None:
    assert findings([write(1, "a", ("n1", 1), outcome="fail")], replicas()).ok


def test_siblings_of_one_writer_over_the_cap_are_reported() -> None:
    writes = [write(i, f"v{i}", ("n1", i)) for i in range(1, 4)]
    live = [(("n1", i), f"v{i}", 0) for i in range(1, 4)]
    at_cap = check(writes, replicas(*live), REGIONS, siblings_max={NS: 3})
    assert at_cap.ok and at_cap.over_namespace_cap == 0, at_cap
    over = check(writes, replicas(*live), REGIONS, siblings_max={NS: 2})
    assert not over.ok
    assert sorted(x["region"] for x in over.over_cap) == sorted(REGIONS)
    assert all(x["writer"] == "n1" and x["siblings"] == 3 and x["cap"] == 2 for x in over.over_cap)


def test_siblings_of_several_writers_may_add_up_past_the_cap_and_are_counted() -> None:
    # Each origin accepted its write under the cap; replicas merging them must keep them all.
    writes = [write(i, f"v{i}", (f"n{i}", 1)) for i in range(1, 4)]
    live = [((f"n{i}", 1), f"v{i}", 0) for i in range(1, 4)]
    result = check(writes, replicas(*live), REGIONS, siblings_max={NS: 2})
    assert result.ok, result
    assert result.over_namespace_cap == len(REGIONS)


def test_a_read_with_more_siblings_of_one_writer_than_the_cap_is_reported() -> None:
    crowded = Seen(live=[(("n1", i), f"v{i}", 0) for i in range(1, 4)])
    writes = [write(i, f"v{i}", ("n1", i)) for i in range(1, 4)]
    rmw = write(4, "w", ("n1", 4), read=crowded)
    result = check([*writes, rmw], replicas((("n1", 4), "w", 0)), REGIONS, siblings_max={NS: 2})
    assert [x["op"] for x in result.over_cap] == [4]
