"""Hand-made histories the checker once passed although each shows a violation (regressions):
a read over the cap inside a write that failed, a value on a key it was never written to or
written only in a refused write, a key no one wrote, an lww order taken from a replica's HLC
instead of the acknowledged one, and a live version carrying an acknowledged tombstone's dot."""

from __future__ import annotations

from torture.checker import check
from torture.history import Dot, Op, Seen

NS = "t_siblings"
LWW = "t_lww"
REGIONS = ("eu-west-1", "eu-central-1")


def write(
    op_id: int,
    value: str,
    dot: Dot | None,
    *,
    read: Seen | None = None,
    outcome: str = "ok",
    hlc: int = 0,
    namespace: str = NS,
    key: str = "k",
    f: str | None = None,
) -> Op:
    return Op(
        op_id, "client-0", "eu-west-1", f or ("rmw" if read is not None else "write"), namespace, key,
        0.0, 1.0, outcome, value, read, dot if outcome == "ok" else None, hlc,
    )  # fmt: skip


def everywhere(*live: tuple[Dot, str, int]) -> dict[str, Seen]:
    return {region: Seen(live=list(live)) for region in REGIONS}


def test_a_read_over_the_cap_is_reported_even_when_the_write_after_it_timed_out() -> None:
    crowded = Seen(vv={"n1": 3}, live=[(("n1", i), f"v{i}", 0) for i in range(1, 4)])
    writes = [write(i, f"v{i}", ("n1", i)) for i in range(1, 4)]
    rmw = write(4, "w", None, read=crowded, outcome="info")  # the read is real; the write timed out
    final = {NS: {"k": everywhere((("n1", 4), "w", 0))}}
    result = check([*writes, rmw], final, REGIONS, siblings_max={NS: 2})
    assert [x["op"] for x in result.over_cap] == [4], result


def test_a_read_over_the_cap_is_reported_even_when_the_write_after_it_was_refused() -> None:
    crowded = Seen(vv={"n1": 3}, live=[(("n1", i), f"v{i}", 0) for i in range(1, 4)])
    writes = [write(i, f"v{i}", ("n1", i)) for i in range(1, 4)]
    refused = write(4, "w", None, read=crowded, outcome="fail")  # the read is real; the write refused
    later = write(5, "x", ("n1", 4), read=Seen(vv={"n1": 3}))  # supersedes v1..v3
    final = {NS: {"k": everywhere((("n1", 4), "x", 0))}}
    result = check([*writes, refused, later], final, REGIONS, siblings_max={NS: 2})
    assert [x["op"] for x in result.over_cap] == [4], result


def test_a_value_written_to_another_key_is_a_phantom_here() -> None:
    ops = [write(1, "a", ("n1", 1), key="k"), write(2, "b", ("n1", 1), key="k2")]
    final = {
        NS: {
            "k": everywhere((("n1", 1), "a", 0), (("n2", 9), "b", 0)),  # b was never written to k
            "k2": everywhere((("n1", 1), "b", 0)),
        }
    }
    result = check(ops, final, REGIONS)
    assert result.phantoms, result


def test_a_key_nobody_wrote_is_still_checked_for_phantoms() -> None:
    ops = [write(1, "a", ("n1", 1), key="k")]
    final = {NS: {"k": everywhere((("n1", 1), "a", 0)), "k3": everywhere((("n2", 1), "zzz", 0))}}
    result = check(ops, final, REGIONS)
    assert result.phantoms, result


def test_the_value_of_a_write_refused_for_certain_is_not_allowed_to_be_live() -> None:
    # outcome "fail" = the node refused it before doing anything (e.g. FAILED_PRECONDITION:
    # the subject was erased, or the region may not hold it). If it is stored, that is a bug.
    ops = [write(1, "a", None, outcome="fail")]
    result = check(ops, {NS: {"k": everywhere((("n1", 1), "a", 0))}}, REGIONS)
    assert not result.ok, result


def test_lww_order_uses_the_acknowledged_hlc_of_the_live_version() -> None:
    ops = [
        write(1, "b", ("n2", 1), hlc=20, namespace=LWW),
        write(2, "a", ("n1", 1), hlc=30, namespace=LWW),
    ]
    final = {LWW: {"k": everywhere((("n2", 1), "b", 40))}}
    result = check(ops, final, REGIONS, lww_namespaces=[LWW])
    assert not result.ok, result


def test_a_live_version_with_the_dot_of_an_acknowledged_delete_is_dot_reuse() -> None:
    ops = [
        write(1, "a", ("n1", 1)),
        write(2, "", ("n1", 2), read=Seen(vv={"n1": 1}), f="delete"),
        write(3, "x", None, outcome="info"),  # timed out; the node gave it (n1, 2) again
    ]
    final = {NS: {"k": everywhere((("n1", 2), "x", 0))}}
    result = check(ops, final, REGIONS)
    assert result.dot_reuse, result


def test_a_timed_out_write_does_not_excuse_a_loss_where_the_replica_never_saw_the_version() -> None:
    # The rmw read "a" and timed out. Had it committed, its context (covering n1:1) would be in
    # every replica; eu-central-1 has nothing of n1:1, so "a" is lost there, whatever the rmw did.
    ops = [write(1, "a", ("n1", 1)), write(2, "b", None, read=Seen(vv={"n1": 1}), outcome="info")]
    final = {
        NS: {
            "k": {
                "eu-west-1": Seen(vv={"n1": 2}, live=[(("n1", 2), "b", 0)]),
                "eu-central-1": Seen(),
            }
        }
    }
    result = check(ops, final, REGIONS)
    assert [(x["region"], x["op"]) for x in result.lost] == [("eu-central-1", 1)], result


def test_a_timed_out_delete_that_committed_still_excuses_what_it_read() -> None:
    # The delete timed out but committed: every replica's context covers n1:1 and none holds it.
    ops = [write(1, "a", ("n1", 1)), write(2, "", None, read=Seen(vv={"n1": 1}), outcome="info", f="delete")]
    final = {NS: {"k": {region: Seen(vv={"n1": 2}) for region in REGIONS}}}
    assert check(ops, final, REGIONS).ok
