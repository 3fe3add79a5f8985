"""causality.withdraw: a copy removed from one region only, as if it had never arrived there."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from domicile.causality import CausalContext, Dot, KeyState, Version, merge, next_dot, sha256, withdraw


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
