"""causality.withdraw: a copy removed from one region only, as if it had never arrived there."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.causality import (
    CausalContext,
    Dot,
    KeyState,
    Mutation,
    Version,
    apply,
    local_write,
    merge,
    next_dot,
    sha256,
    withdraw,
)
from node.replication.entropy import state_mutations


def version(node: str, counter: int) -> Version:
    value = f"{node}:{counter}".encode()
    return Version(dot=Dot(node, counter), value=value, hlc=counter, checksum=sha256(value))


def state(*dots: tuple[str, int], extra: tuple[tuple[str, int], ...] = ()) -> KeyState:
    versions = tuple(version(n, c) for n, c in dots)
    context = CausalContext.of({}, [Dot(n, c) for n, c in (*dots, *extra)])
    return KeyState(versions, context)


def test_a_foreign_version_leaves_with_its_dot_and_comes_back_by_merge() -> None:
    held = state(("eu", 1), ("us", 1))
    out = withdraw(held, [Dot("eu", 1)], "us")
    assert [v.dot for v in out.versions] == [Dot("us", 1)]
    assert not out.context.covers(Dot("eu", 1))
    # Once allowed again, the copy from elsewhere is taken back, not treated as deleted.
    back = merge(out, state(("eu", 1)))
    assert Dot("eu", 1) in {v.dot for v in back.versions}


def test_an_own_version_leaves_but_its_counter_is_never_issued_again() -> None:
    held = state(("us", 1), ("us", 2))
    out = withdraw(held, [Dot("us", 2)], "us")
    assert not out.context.covers(Dot("us", 2))
    assert next_dot(out, "us", CausalContext.empty()).counter > 2
    assert Dot("us", 2) in {v.dot for v in merge(out, state(("us", 2))).versions}


def test_withdrawing_what_is_not_there_changes_nothing() -> None:
    held = state(("eu", 1))
    assert withdraw(held, [Dot("eu", 2)], "us") is held


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.tuples(st.sampled_from(["a", "b", "us"]), st.integers(1, 6)), min_size=1, max_size=6),
    st.data(),
)
def test_only_the_named_versions_leave_and_no_counter_of_this_node_goes_back(
    dots: set[tuple[str, int]], data: st.DataObject
) -> None:
    held = state(*sorted(dots))
    gone = data.draw(st.sets(st.sampled_from(sorted(dots))))
    out = withdraw(held, [Dot(n, c) for n, c in gone], "us")
    assert {(v.dot.node_id, v.dot.counter) for v in out.versions} == dots - gone
    for n, c in gone:
        assert not out.context.covers(Dot(n, c))
    for n, c in dots - gone:
        assert out.context.covers(Dot(n, c))
    assert out.context.max_counter("us") >= held.context.max_counter("us")


# A client write retried under one request id on two nodes: a:1 and b:1, twins (causality.apply
# keeps a:1 everywhere and covers b:1). "eu" is the region that withdraws, through its node "eu";
# "us" is a region that keeps its allowed copy.


def attempt(node: str) -> Mutation:
    value = b"once"
    version = Version(Dot(node, 1), value, hlc=1, checksum=sha256(value), request_id="r1")
    return Mutation("ns", "k", CausalContext.empty(), version)


def applied(*mutations: Mutation, to: KeyState | None = None) -> KeyState:
    for m in mutations:
        to = apply(to, m).state
    assert to is not None
    return to


def twins_withdrawn_in_eu() -> tuple[KeyState, KeyState]:
    """(eu after it withdrew the kept twin a:1, us still holding it)."""
    eu = withdraw(applied(attempt("a"), attempt("b")), [Dot("a", 1)], "eu")
    us = applied(attempt("a"), attempt("b"))
    assert [v.dot for v in us.versions] == [Dot("a", 1)]
    return eu, us


def written_in_eu(eu: KeyState, supersedes: CausalContext | None) -> Mutation:
    value = b"new"
    fresh = Version(Dot("eu", 0), value, hlc=5, checksum=sha256(value))
    mutation, _ = local_write(eu, namespace="ns", key="k", node_id="eu", supersedes=supersedes, version=fresh)
    return mutation


def test_regression_a_write_after_a_withdrawal_does_not_supersede_the_withdrawn_twin_elsewhere() -> None:
    # A client in eu reads the key after eu withdrew a:1: it never saw a:1's value, but the
    # context it got covered the twin b:1. Its write reached us, where the twin rule made it
    # supersede a:1: an acknowledged write lost everywhere, to a write that never saw it.
    eu, us = twins_withdrawn_in_eu()
    read_context = eu.context
    for supersedes in (read_context, None):  # with the read's context, and a blind write
        after = applied(written_in_eu(eu, supersedes), to=us)
        assert Dot("a", 1) in {v.dot for v in after.versions}


def test_regression_an_anti_entropy_answer_after_a_withdrawal_keeps_the_withdrawn_twin_elsewhere() -> None:
    # eu holds a concurrent sibling c:1 that us lacks; eu's state as mutations carried b:1 in
    # their context (the twins left out are only those of versions eu still holds), so c:1
    # superseded a:1 at us.
    sibling = Mutation("ns", "k", CausalContext.empty(), Version(Dot("c", 1), b"other", hlc=3))
    eu = withdraw(applied(attempt("a"), attempt("b"), sibling), [Dot("a", 1)], "eu")
    us = applied(attempt("a"), attempt("b"))
    after = applied(*state_mutations("ns", "k", eu), to=us)
    assert [v.dot for v in after.versions] == [Dot("a", 1), Dot("c", 1)]


def test_regression_a_withdrawn_twin_is_taken_back_when_it_arrives_again() -> None:
    # Once the region may hold it again, a:1 comes back by anti-entropy or a backfill (apply).
    # The request mark eu kept made apply drop it as a duplicate of a version already
    # superseded: eu never got the write back.
    eu, us = twins_withdrawn_in_eu()
    back = applied(*state_mutations("ns", "k", us), to=eu)
    assert [v.dot for v in back.versions] == [Dot("a", 1)]
    # and the same by the original mutations, from a stream sent again, in either order
    for order in ((attempt("a"), attempt("b")), (attempt("b"), attempt("a"))):
        again = applied(*order, to=eu)
        assert [v.dot for v in again.versions] == [Dot("a", 1)]
        assert again.context.covers(Dot("b", 1))


def test_a_withdrawal_forgets_the_twins_and_the_request_but_not_this_nodes_counter() -> None:
    # The twin is this node's own: a retry here made eu:1, a retry elsewhere the kept a:1.
    eu = applied(attempt("a"), attempt("eu"))
    assert eu.request("r1") is not None and eu.context.covers(Dot("eu", 1))
    out = withdraw(eu, [Dot("a", 1)], "eu")
    assert out.versions == ()
    assert out.request("r1") is None
    assert not out.context.covers(Dot("a", 1)) and not out.context.covers(Dot("eu", 1))
    assert next_dot(out, "eu", CausalContext.empty()).counter > 1


def test_another_requests_mark_stays_when_a_version_is_withdrawn() -> None:
    other = Mutation("ns", "k", CausalContext.empty(), replace(attempt("c").version, request_id="r2"))
    eu = withdraw(applied(attempt("a"), attempt("b"), other), [Dot("a", 1)], "eu")
    assert eu.request("r1") is None
    assert eu.request("r2") is not None
    assert [v.dot for v in eu.versions] == [Dot("c", 1)]


def test_a_retry_after_a_withdrawal_is_the_same_logical_write_everywhere() -> None:
    # The mark left with the withdrawal, so a client retrying r1 in eu writes again: a third
    # twin, eu:k. Every other node remembers r1 and takes it for a duplicate of the kept a:1;
    # eu holds it until a:1 comes back, which then replaces it. One version in the end.
    eu, us = twins_withdrawn_in_eu()
    value = b"once"
    retry = Version(Dot("eu", 0), value, hlc=7, checksum=sha256(value), request_id="r1")
    third, eu_applied = local_write(
        eu, namespace="ns", key="k", node_id="eu", supersedes=eu.context, version=retry
    )
    eu = eu_applied.state
    assert [v.dot for v in eu.versions] == [third.version.dot]
    us = applied(third, to=us)
    assert [v.dot for v in us.versions] == [Dot("a", 1)]
    mark = us.request("r1")
    assert mark is not None and third.version.dot in mark.dots
    # a later write in eu that saw its retry supersedes the logical write at us too
    back = applied(*state_mutations("ns", "k", us), to=eu)
    assert [v.dot for v in back.versions] == [Dot("a", 1)]
    assert [v.dot for v in applied(*state_mutations("ns", "k", eu), to=us).versions] == [Dot("a", 1)]


# A history of writes on nodes a, b and c, some of them attempts of a client request (retried
# on several nodes), each superseding some of the writes before it.
writes = st.lists(
    st.tuples(st.sampled_from("abc"), st.sampled_from(["", "r1", "r2"]), st.sets(st.integers(0, 9))),
    min_size=1,
    max_size=10,
)


def history(events: list[tuple[str, str, set[int]]]) -> list[Mutation]:
    counters: dict[str, int] = {}
    out: list[Mutation] = []
    for node, request_id, seen in events:
        counters[node] = counters.get(node, 0) + 1
        value = f"{node}{counters[node]}".encode()
        version = Version(Dot(node, counters[node]), value, hlc=len(out) + 1, request_id=request_id)
        context = CausalContext.of({}, [out[i].version.dot for i in seen if i < len(out)])
        out.append(Mutation("ns", "k", context, version))
    return out


@settings(max_examples=300, deadline=None)
@given(writes, st.data())
def test_what_a_region_withdrew_is_superseded_nowhere_by_it_and_comes_back_to_it(
    events: list[tuple[str, str, set[int]]], data: st.DataObject
) -> None:
    mutations = history(events)
    us = applied(*mutations)
    held = [v.dot for v in us.versions]
    gone = data.draw(st.sets(st.sampled_from(held))) if held else set()
    eu = withdraw(us, gone, "eu")
    # Nothing eu sends afterwards (a client's write with what it read, a blind write, its
    # state as mutations) supersedes at us a version eu withdrew.
    for supersedes in (eu.context, None):
        after = applied(written_in_eu(eu, supersedes), *state_mutations("ns", "k", eu), to=us)
        assert gone <= {v.dot for v in after.versions}
    # Allowed again, us's state as mutations gives eu back exactly what us holds.
    assert applied(*state_mutations("ns", "k", us), to=eu).versions == us.versions


def test_a_retry_after_a_withdrawal_with_the_smaller_dot_becomes_the_version_everywhere() -> None:
    # The withdrawing node's retry has the smallest dot of the three attempts: as for any twins,
    # every node then keeps it, and eu does not take the withdrawn one back over it.
    here = withdraw(applied(attempt("b"), attempt("c")), [Dot("b", 1)], "a")
    there = applied(attempt("b"), attempt("c"))
    value = b"once"
    retry = Version(Dot("a", 0), value, hlc=7, checksum=sha256(value), request_id="r1")
    third, done = local_write(
        here, namespace="ns", key="k", node_id="a", supersedes=here.context, version=retry
    )
    there = applied(third, to=there)
    here = applied(*state_mutations("ns", "k", there), attempt("b"), to=done.state)
    assert [v.dot for v in here.versions] == [v.dot for v in there.versions] == [third.version.dot]
