"""The laws of domicile.causality, checked with hypothesis.

A failing example prints its `@reproduce_failure` blob (print_blob) and hypothesis replays
saved failures first; `pytest --hypothesis-seed=N` replays a whole run.

Key states are not arbitrary: they are produced by simulating nodes that write (with contexts
taken from states someone has seen, as clients pass back what a read returned, or none) and
deliver each other's mutations. The laws hold for every state a real cluster can reach.
histories(request_ids=True) adds client request ids: retries of a write on the node that made
it (answered from the key's request mark) and on others (a second version, a twin).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, replace
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from domicile import causality
from domicile.causality import (
    REQUEST_MARKS_PER_KEY,
    CausalContext,
    Dot,
    KeyState,
    Mutation,
    RequestMark,
    Version,
    apply,
    local_write,
    lww_winner,
    merge,
    next_dot,
    sha256,
    visible,
    withdraw,
)
from domicile.model import ConflictMode
from node.replication.entropy import state_mutations

LAWS = settings(max_examples=200, deadline=None, print_blob=True)
# Each history example simulates a small cluster: fewer examples keep the file at a few seconds.
HISTORY_LAWS = settings(max_examples=120, deadline=None, print_blob=True)
NODES = ("n1", "n2", "n3")

node_ids = st.sampled_from(NODES)
dots = st.builds(Dot, node_ids, st.integers(1, 7))
contexts = st.builds(
    lambda vv, ds: CausalContext.of(vv, ds),
    st.dictionaries(node_ids, st.integers(0, 5)),
    st.frozensets(dots, max_size=6),
)


def events(ctx: CausalContext) -> frozenset[Dot]:
    return frozenset(Dot(n, i) for n, top in ctx.vv.items() for i in range(1, top + 1)) | ctx.dots


# -- causal contexts -------------------------------------------------------------------------


@LAWS
@given(contexts, contexts)
def test_join_is_commutative(a: CausalContext, b: CausalContext) -> None:
    assert a.join(b) == b.join(a)


@LAWS
@given(contexts, contexts, contexts)
def test_join_is_associative(a: CausalContext, b: CausalContext, c: CausalContext) -> None:
    assert a.join(b).join(c) == a.join(b.join(c))


@LAWS
@given(contexts)
def test_join_is_idempotent_and_empty_is_its_identity(a: CausalContext) -> None:
    assert a.join(a) == a
    assert a.join(CausalContext.empty()) == a
    assert CausalContext.empty().join(a) == a


@LAWS
@given(contexts, contexts)
def test_join_is_the_union_of_events(a: CausalContext, b: CausalContext) -> None:
    assert events(a.join(b)) == events(a) | events(b)


@LAWS
@given(contexts)
def test_the_compact_form_is_canonical(a: CausalContext) -> None:
    assert CausalContext.of({}, events(a)) == a
    assert all(c > 0 for c in a.vv.values())
    assert not any(a.vv.get(d.node_id, 0) >= d.counter - 1 for d in a.dots)
    assert a.event_count() == len(events(a))


@LAWS
@given(contexts, dots)
def test_covers_add_and_max_counter_agree_with_the_event_set(a: CausalContext, d: Dot) -> None:
    assert a.covers(d) == (d in events(a))
    assert events(a.add(d)) == events(a) | {d}
    # add() skips the general join in the common cases; it must still give the compact form.
    assert a.add(d) == CausalContext.of({}, events(a) | {d})
    assert list(a.add(d).vv) == sorted(a.add(d).vv)
    for node in NODES:
        assert a.max_counter(node) == max([0, *(e.counter for e in events(a) if e.node_id == node)])


@LAWS
@given(contexts, contexts)
def test_leq_is_inclusion_of_events(a: CausalContext, b: CausalContext) -> None:
    assert a.leq(b) == (events(a) <= events(b))


@LAWS
@given(contexts, contexts)
def test_leq_is_reflexive_and_antisymmetric(a: CausalContext, b: CausalContext) -> None:
    assert a.leq(a)
    if a.leq(b) and b.leq(a):
        assert a == b
        assert events(a) == events(b)


@LAWS
@given(contexts, contexts, contexts)
def test_leq_is_transitive(a: CausalContext, x: CausalContext, y: CausalContext) -> None:
    b = a.join(x)
    c = b.join(y)
    assert a.leq(b) and b.leq(c) and a.leq(c)
    # And on unrelated triples, whenever the premises hold.
    if a.leq(x) and x.leq(y):
        assert a.leq(y)


@LAWS
@given(contexts, contexts, contexts)
def test_join_is_the_least_upper_bound(a: CausalContext, b: CausalContext, extra: CausalContext) -> None:
    j = a.join(b)
    assert a.leq(j) and b.leq(j)
    upper = j.join(extra)  # any upper bound of a and b contains j
    assert j.leq(upper)
    if a.leq(extra) and b.leq(extra):
        assert j.leq(extra)


# -- simulated histories ---------------------------------------------------------------------


@dataclass
class History:
    mutations: list[Mutation]
    reachable: list[KeyState]  # every state some node held along the way
    nodes: dict[str, KeyState | None]  # each node's state at the end


@dataclass(frozen=True)
class Request:
    """What a client sends for one logical write: a retry sends it again, unchanged."""

    request_id: str
    supersedes: CausalContext | None
    tombstone: bool
    value: bytes


def sync_by_merge(state: KeyState | None, other: KeyState) -> KeyState:
    return merge(state or KeyState(), other)


def sync_by_state_mutations(state: KeyState | None, other: KeyState) -> KeyState:
    """A node's anti-entropy pull: the peer's state as mutations (EntropyStates), applied as
    replicated writes are (the receiver's apply_repair)."""
    return deliver(state_mutations("ns", "k", other), state)


@st.composite
def histories(draw: st.DrawFn, steps_max: int = 14, request_ids: bool = False) -> History:
    """Writes, deliveries and anti-entropy across NODES. With request_ids every write carries a
    client request id, and some are retries of an earlier request on any node: where the node
    remembers the id the retry is answered from its mark (no write, as the engine's _replay);
    elsewhere it is a second version of the request, a twin. The answer's context (which names
    the first attempt's version alone) joins the contexts later writes may pass. Anti-entropy is
    then the node's pull (state_mutations applied: a pull carries no request marks).
    A history makes fewer requests than REQUEST_MARKS_PER_KEY, and its HLCs stay far inside
    REQUEST_WINDOW_MS: no key forgets an id."""
    assert steps_max < REQUEST_MARKS_PER_KEY
    nodes: dict[str, KeyState | None] = dict.fromkeys(NODES)
    seen = [CausalContext.empty()]
    reachable: list[KeyState] = []
    mutations: list[Mutation] = []
    requests: list[Request] = []
    sync = sync_by_state_mutations if request_ids else sync_by_merge
    for _ in range(draw(st.integers(1, steps_max))):
        node = draw(node_ids)
        action = draw(st.sampled_from(("write", "write", "deliver", "deliver", "sync")))
        if action == "deliver" and mutations:
            nodes[node] = apply(nodes[node], draw(st.sampled_from(mutations))).state
        elif action == "sync":
            # Anti-entropy with another node.
            other = nodes[draw(node_ids)]
            if other is not None:
                nodes[node] = sync(nodes[node], other)
        else:
            request = draw_request(draw, node, seen, requests, len(mutations), request_ids)
            state = nodes[node]
            mark = state.request(request.request_id) if state and request.request_id else None
            if mark is not None:
                # The node's answer to a retry: the first attempt's version, nothing written.
                seen.append(CausalContext.of(dots=[mark.dot]))
                continue
            version = Version(
                dot=Dot(node, 0),
                value=request.value,
                hlc=draw(st.integers(0, 20)),  # a small range: equal timestamps do happen
                tombstone=request.tombstone,
                checksum=sha256(request.value),
                request_id=request.request_id,
            )
            mutation, applied = local_write(
                state, namespace="ns", key="k", node_id=node, supersedes=request.supersedes, version=version
            )
            nodes[node] = applied.state
            mutations.append(mutation)
        state = nodes[node]
        if state is not None:
            seen.append(state.context)
            reachable.append(state)
    return History(mutations, reachable, nodes)


def draw_request(
    draw: st.DrawFn, node: str, seen: list[CausalContext], requests: list[Request], n: int, request_ids: bool
) -> Request:
    if request_ids and requests and draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from(requests))  # a retry, on this node or another
    pick = draw(st.integers(-1, len(seen) - 1))
    tombstone = draw(st.integers(0, 3)) == 0
    value = b"" if tombstone else f"{node}#{n}".encode()
    request = Request(
        f"r{len(requests)}" if request_ids else "", None if pick < 0 else seen[pick], tombstone, value
    )
    if request_ids:
        requests.append(request)
    return request


def deliver(mutations: list[Mutation], start: KeyState | None = None) -> KeyState:
    state = start
    for m in mutations:
        state = apply(state, m).state
    return state or KeyState()


@st.composite
def history_and_deliveries(
    draw: st.DrawFn, replicas: int = 2, request_ids: bool | None = False
) -> tuple[History, list[list[Mutation]]]:
    """A history and, per replica, every mutation in some order with some duplicates (request
    ids None: histories with and without them)."""
    with_ids = draw(st.booleans()) if request_ids is None else request_ids
    history = draw(histories(request_ids=with_ids))
    orders = []
    for _ in range(replicas):
        order = list(draw(st.permutations(history.mutations)))
        for dup in (
            draw(st.lists(st.sampled_from(history.mutations), max_size=4)) if history.mutations else []
        ):
            order.insert(draw(st.integers(0, len(order))), dup)
        orders.append(order)
    return history, orders


# Histories with request ids (retries, twins) or without: for the laws that hold for both.
any_histories = st.booleans().flatmap(lambda with_ids: histories(request_ids=with_ids))


def reachable_state(history: History, i: int) -> KeyState:
    return history.reachable[i % len(history.reachable)] if history.reachable else KeyState()


def attempts(mutations: list[Mutation], version: Version) -> set[Dot]:
    """The dots of every version of the version's client write: its own and its twins'."""
    if not version.request_id:
        return {version.dot}
    return {m.version.dot for m in mutations if m.version.request_id == version.request_id}


def marked_dots(state: KeyState, version: Version) -> set[Dot]:
    """The version's dot and those of the twins the state's mark for its request names."""
    mark = state.request(version.request_id) if version.request_id else None
    return {version.dot, *(mark.dots if mark else ())}


def expected_versions(mutations: list[Mutation]) -> tuple[Version, ...]:
    """What a replica holding exactly these mutations keeps, from the set alone: one version per
    client write (its attempts share a request id; a version without one is a write of its
    own), the attempt with the smallest dot, unless some mutation's context covers any of its
    attempts: that writer saw the write, under one dot or the other."""
    superseded = set().union(*(events(m.context) for m in mutations))
    writes: dict[str | Dot, list[Version]] = {}
    for m in mutations:
        writes.setdefault(m.version.request_id or m.version.dot, []).append(m.version)
    kept = [min(vs, key=lambda v: v.dot) for vs in writes.values() if not {v.dot for v in vs} & superseded]
    return tuple(sorted(kept, key=lambda v: v.dot))


def converged(a: KeyState, b: KeyState) -> bool:
    """The same versions and context (what the anti-entropy digest compares) and the same dots
    in each request mark. A mark's HLC and place in the list are those of the attempt a node
    met first, which differ with the arrival order and move nothing."""
    marks = (dict((m.request_id, m.dots) for m in s.requests) for s in (a, b))
    return a.versions == b.versions and a.context == b.context and next(marks) == next(marks)


@HISTORY_LAWS
@given(history_and_deliveries(replicas=3), st.data())
def test_replicas_that_receive_the_same_mutations_converge(
    case: tuple[History, list[list[Mutation]]], data: st.DataObject
) -> None:
    history, orders = case
    reference = deliver(history.mutations)
    for order in orders:
        assert deliver(order) == reference
    # The writers themselves, once they have every mutation, hold the same state.
    for state in history.nodes.values():
        assert deliver(orders[0], state) == reference
    # Interleaved with anti-entropy: parts delivered to separate replicas, then merged.
    order = orders[1]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=3)))
    parts = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    merged = functools.reduce(merge, (deliver(p) for p in parts), KeyState())
    assert merged == reference


@HISTORY_LAWS
@given(any_histories, st.integers(0, 1000), st.integers(0, 1000))
def test_apply_is_idempotent(history: History, i: int, j: int) -> None:
    state = reachable_state(history, i)
    m = history.mutations[j % len(history.mutations)] if history.mutations else None
    if m is None:
        return
    once = apply(state, m)
    twice = apply(once.state, m)
    assert twice.state == once.state
    assert not twice.changed


@HISTORY_LAWS
@given(any_histories, st.integers(0, 1000), st.sampled_from(["", "req-1"]))
def test_applying_to_no_state_is_applying_to_the_empty_state(
    history: History, j: int, request_id: str
) -> None:
    # apply() takes a shortcut for a key never held; it must agree with the general merge.
    if not history.mutations:
        return
    m = history.mutations[j % len(history.mutations)]
    m = Mutation(m.namespace, m.key, m.context, replace(m.version, request_id=request_id), m.lsn)
    assert apply(None, m) == apply(KeyState(), m)


@HISTORY_LAWS
@given(histories(), st.integers(0, 1000), st.integers(0, 1000))
def test_applying_a_mutation_is_merging_its_singleton_state(history: History, i: int, j: int) -> None:
    if not history.mutations:
        return
    state = reachable_state(history, i)
    m = history.mutations[j % len(history.mutations)]
    singleton = KeyState((m.version,), m.context.add(m.version.dot))
    assert apply(state, m).state == merge(state, singleton)
    assert apply(None, m).state == singleton


@HISTORY_LAWS
@given(histories(), st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000))
def test_merge_is_commutative_associative_and_idempotent(history: History, i: int, j: int, k: int) -> None:
    a, b, c = (reachable_state(history, n) for n in (i, j, k))
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    assert merge(a, KeyState()) == a


@HISTORY_LAWS
@given(any_histories)
def test_superseded_versions_never_come_back(history: History) -> None:
    final = deliver(history.mutations)
    superseded = set().union(*(events(m.context) for m in history.mutations)) if history.mutations else set()
    assert not {v.dot for v in final.versions} & superseded
    # Nor does a version whose twin (its request's version made on another node) was superseded.
    assert not {d for v in final.versions for d in attempts(history.mutations, v)} & superseded
    assert {v.dot for v in final.versions} <= {m.version.dot for m in history.mutations}
    assert events(final.context) >= {m.version.dot for m in history.mutations}


@HISTORY_LAWS
@given(history_and_deliveries(replicas=1, request_ids=None), node_ids, st.integers(0, 20))
def test_a_delete_with_the_full_context_dominates_what_it_deletes(
    case: tuple[History, list[list[Mutation]]], node: str, hlc: int
) -> None:
    history, (order,) = case
    holder = deliver(history.mutations, history.nodes[node])  # the deleting node has seen everything
    tombstone = Version(Dot(node, 0), b"", hlc, tombstone=True, checksum=sha256(b""))
    delete, _ = local_write(holder, namespace="ns", key="k", node_id=node, supersedes=None, version=tombstone)
    # Delivered before, after or between the writes it deleted, in any order: nothing comes back.
    for at in (0, len(order) // 2, len(order)):
        replica = deliver([*order[:at], delete, *order[at:]])
        assert replica.versions == (delete.version,)
        assert not replica.has_live()
        assert visible(replica, ConflictMode.SIBLINGS) == ()
        assert visible(replica, ConflictMode.LWW) == ()


@HISTORY_LAWS
@given(history_and_deliveries(replicas=2, request_ids=None))
def test_lww_visibility_is_the_same_whatever_the_arrival_order(
    case: tuple[History, list[list[Mutation]]],
) -> None:
    _, orders = case
    a, b = (deliver(order) for order in orders)
    assert visible(a, ConflictMode.LWW) == visible(b, ConflictMode.LWW)
    assert visible(a, ConflictMode.SIBLINGS) == visible(b, ConflictMode.SIBLINGS)


versions = st.builds(
    lambda dot, hlc, tomb: Version(dot=dot, value=b"", hlc=hlc, tombstone=tomb, checksum=sha256(b"")),
    dots,
    st.integers(0, 5),
    st.booleans(),
)


@LAWS
@given(st.lists(versions, unique_by=lambda v: v.dot, max_size=8), st.randoms(use_true_random=False))
def test_lww_winner_is_the_max_of_hlc_node_and_counter_in_any_order(vs: list[Version], rnd) -> None:
    expected = max(vs, key=lambda v: (v.hlc, v.dot.node_id, v.dot.counter), default=None)
    shuffled = list(vs)
    rnd.shuffle(shuffled)
    assert lww_winner(vs) == expected
    assert lww_winner(shuffled) == expected
    state = KeyState(tuple(sorted(vs, key=lambda v: v.dot)), CausalContext.of({}, (v.dot for v in vs)))
    shown = visible(state, ConflictMode.LWW)
    assert shown == (() if expected is None or expected.tombstone else (expected,))


def test_lww_ties_on_hlc_break_by_node_id_then_counter() -> None:
    a = Version(Dot("n1", 9), b"", 5, checksum=sha256(b""))
    b = Version(Dot("n2", 1), b"", 5, checksum=sha256(b""))
    c = Version(Dot("n2", 2), b"", 5, checksum=sha256(b""))
    assert lww_winner([a, b, c]) == c
    assert lww_winner([c, b, a]) == c
    assert lww_winner([a, b]) == b


@HISTORY_LAWS
@given(any_histories)
def test_no_dot_is_ever_issued_twice(history: History) -> None:
    issued = [m.version.dot for m in history.mutations]
    assert len(issued) == len(set(issued))


@LAWS
@given(contexts, contexts, node_ids)
def test_next_dot_is_past_everything_seen_and_supplied(
    state_ctx: CausalContext, supersedes: CausalContext, node: str
) -> None:
    state = KeyState((), state_ctx)
    dot = next_dot(state, node, supersedes)
    assert dot.node_id == node
    assert not state_ctx.covers(dot) and not supersedes.covers(dot)
    assert dot.counter == max(state_ctx.max_counter(node), supersedes.max_counter(node)) + 1
    assert next_dot(None, node, CausalContext.empty()) == Dot(node, 1)


@HISTORY_LAWS
@given(any_histories, st.integers(0, 1000), contexts, node_ids)
def test_a_local_write_removes_exactly_the_versions_its_context_covers(
    history: History, i: int, supersedes: CausalContext, node: str
) -> None:
    state = reachable_state(history, i)
    version = Version(Dot(node, 0), b"v", 1, checksum=sha256(b"v"))
    mutation, applied = local_write(
        state, namespace="ns", key="k", node_id=node, supersedes=supersedes, version=version
    )
    # A version goes when the context covers its dot or one of its twins' (the key's mark for
    # its request names them).
    kept = [v for v in state.versions if not any(supersedes.covers(d) for d in marked_dots(state, v))]
    assert applied.changed
    assert list(applied.state.versions) == sorted([*kept, mutation.version], key=lambda v: v.dot)
    assert applied.conflict == bool(kept)
    assert mutation.context == supersedes
    assert applied.state.context == state.context.join(supersedes).add(mutation.version.dot)


# -- request ids: a write retried on another node ----------------------------------------------


def retried(node: str, counter: int, request_id: str, context: CausalContext | None = None) -> Mutation:
    version = Version(Dot(node, counter), b"once", hlc=counter, request_id=request_id)
    return Mutation("ns", "k", context or CausalContext.empty(), version)


def per_origin_orders(mutations: list[Mutation]) -> list[list[Mutation]]:
    """Every arrival order that keeps each origin's mutations in their order (as replication does)."""
    orders = []
    for perm in itertools.permutations(mutations):
        positions = {m.version.dot: i for i, m in enumerate(perm)}
        if all(
            positions[a.version.dot] < positions[b.version.dot]
            for a in mutations
            for b in mutations
            if a.version.dot.node_id == b.version.dot.node_id
            and a.version.dot.counter < b.version.dot.counter
        ):
            orders.append(list(perm))
    return orders


def test_two_attempts_of_one_request_leave_one_version_whatever_the_order() -> None:
    a, b = retried("a", 1, "r1"), retried("b", 1, "r1")
    state, *others = [deliver(order) for order in ([a, b], [b, a])]
    assert all(other == state for other in others)
    assert [v.dot for v in state.versions] == [Dot("a", 1)]
    assert state.context.covers(Dot("b", 1))


def test_a_write_superseding_the_dropped_attempt_supersedes_the_kept_one() -> None:
    # The client heard back from b (b:1), so it supersedes b:1; a:1 is the same logical write.
    a, b = retried("a", 1, "r1"), retried("b", 1, "r1")
    follow = Mutation("ns", "k", CausalContext.of(dots=[Dot("b", 1)]), Version(Dot("b", 2), b"next", hlc=5))
    state, *others = [deliver(order) for order in per_origin_orders([a, b, follow])]
    assert others and all(other.versions == state.versions for other in others)
    assert [v.value for v in state.versions] == [b"next"]


def test_negative_control_without_request_ids_both_attempts_stay() -> None:
    state = deliver([retried("a", 1, ""), retried("b", 1, "")])
    assert len(state.versions) == 2


def test_a_key_remembers_a_bounded_number_of_request_ids() -> None:
    state = deliver(
        [
            retried("a", i, f"r{i}", CausalContext.of({"a": i - 1}))
            for i in range(1, REQUEST_MARKS_PER_KEY + 5)
        ]
    )
    # Those of requests it no longer holds a version of are bounded; the held one stays besides.
    newest = f"r{REQUEST_MARKS_PER_KEY + 4}"
    assert {v.request_id for v in state.versions} == {newest}
    assert len([m for m in state.requests if m.request_id != newest]) == REQUEST_MARKS_PER_KEY
    assert state.request("r1") is None and state.request(newest) is not None


def test_regression_a_twin_arriving_after_a_write_that_superseded_it_takes_the_kept_attempt_along() -> None:
    # r1 was written on a (a:1) and retried on b (b:1); the client heard back from b and wrote
    # again through a, superseding b:1 (a:2). Where a:2 arrived before b:1 (at a itself, which
    # wrote it), nothing told a:2 that b:1 was a:1's twin, so a:1 stayed; b:1 then came already
    # covered and was ignored. That node held a:1 beside a:2 for good, the others a:2 alone,
    # and anti-entropy could not bring them together (each side's mutations were seen).
    a, b = retried("a", 1, "r1"), retried("b", 1, "r1")
    follow = Mutation("ns", "k", CausalContext.of(dots=[Dot("b", 1)]), Version(Dot("a", 2), b"next", hlc=5))
    states = [deliver(order) for order in per_origin_orders([a, b, follow])]
    assert len(states) == 3
    for state in states:
        assert [v.dot for v in state.versions] == [Dot("a", 2)]
        assert state.context == CausalContext.of({"a": 2, "b": 1})
        mark = state.request("r1")
        assert mark is not None and mark.dots == (Dot("a", 1), Dot("b", 1))


def test_regression_a_write_past_a_retry_answer_supersedes_what_the_answered_version_did() -> None:
    # r1 (a:2) superseded a:1 at a; its retry there was answered from the mark, with a context
    # naming a:2 alone, and the client's next write went through b with it (b:1). A node that
    # got b:1 before a:2 took a:2 as seen and ignored it, its context with it: a:1 stayed
    # beside b:1 there for good, where the others held b:1 alone.
    first = retried("a", 1, "r0")
    second = Mutation(
        "ns", "k", CausalContext.of({"a": 1}), Version(Dot("a", 2), b"v2", hlc=2, request_id="r1")
    )
    after_replay = Mutation(
        "ns", "k", CausalContext.of(dots=[Dot("a", 2)]), Version(Dot("b", 1), b"v3", hlc=3)
    )
    states = [deliver(order) for order in per_origin_orders([first, second, after_replay])]
    assert len(states) == 3
    for state in states:
        assert [v.dot for v in state.versions] == [Dot("b", 1)]
        assert state.context == CausalContext.of({"a": 2, "b": 1})


def test_regression_an_attempt_arriving_superseded_supersedes_its_twin_arriving_later() -> None:
    # r1 was written on a (a:1) and retried on b (b:1); a client that read a:1 wrote c:1 over
    # it. A node that got c:1 first took a:1 as seen and ignored it, so knew of no request r1:
    # b:1 then stood beside c:1 there for good, where the others dropped it as a:1's twin.
    a, b = retried("a", 1, "r1"), retried("b", 1, "r1")
    over = Mutation("ns", "k", CausalContext.of({"a": 1}), Version(Dot("c", 1), b"over", hlc=5))
    states = [deliver(order) for order in per_origin_orders([a, b, over])]
    assert len(states) == 6
    for state in states:
        assert [v.dot for v in state.versions] == [Dot("c", 1)]
        mark = state.request("r1")
        assert mark is not None and mark.dots == (Dot("a", 1), Dot("b", 1))


# -- request ids in simulated histories --------------------------------------------------------


@HISTORY_LAWS
@given(history_and_deliveries(replicas=3, request_ids=True), st.data())
def test_replicas_converge_with_retried_writes(
    case: tuple[History, list[list[Mutation]]], data: st.DataObject
) -> None:
    history, orders = case
    reference = deliver(history.mutations)
    for order in orders:
        assert converged(deliver(order), reference)
    # The nodes of the history answered retries from their marks and pulled each other's
    # states; once every mutation reaches them, they hold the same.
    for state in history.nodes.values():
        assert converged(deliver(orders[0], state), reference)
    # Parts delivered to separate replicas, then pulled into one by anti-entropy as a node runs
    # it (state_mutations applied, as bootstraps are too; merge() is for restores, and has a law
    # of its own below). A pull carries no mark, so it may keep an
    # attempt whose request a context superseded elsewhere, and it leaves twin dots out of its
    # contexts: it loses nothing, and the mutations, when they come, settle the rest.
    order = orders[1]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=3)))
    parts = [deliver(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    for pulls in (parts, parts[::-1]):
        pulled = functools.reduce(sync_by_state_mutations, pulls, KeyState())
        assert set(reference.versions) <= set(pulled.versions)
        assert events(pulled.context) <= events(reference.context)
        assert converged(deliver(order, pulled), reference)


@HISTORY_LAWS
@given(history_and_deliveries(replicas=2, request_ids=True))
def test_a_write_is_dropped_only_by_a_context_that_saw_it_or_one_of_its_twins(
    case: tuple[History, list[list[Mutation]]],
) -> None:
    # After every arrival, in any order with duplicates, a replica holds what the set of
    # mutations it has received determines (expected_versions): an acknowledged write stays
    # until a write whose context covered one of its dots arrives, and its attempts count as
    # one version.
    _, orders = case
    for order in orders:
        state: KeyState | None = None
        for i, m in enumerate(order):
            state = apply(state, m).state
            assert state.versions == expected_versions(order[: i + 1])


@HISTORY_LAWS
@given(histories(request_ids=True))
def test_a_node_answers_a_retry_it_made_from_its_mark(history: History) -> None:
    # A node keeps the mark of every request it wrote (within REQUEST_MARKS_PER_KEY), through
    # deliveries and anti-entropy: a retry there never makes a second version.
    made = [(m.version.request_id, m.version.dot.node_id) for m in history.mutations]
    assert len(made) == len(set(made))
    for node, state in history.nodes.items():
        for request_id, writer in made:
            if writer == node:
                assert state is not None and state.request(request_id) is not None


# -- a key that remembers only so many request ids ---------------------------------------------


def other_requests(count: int) -> list[Mutation]:
    """Writes of `count` other requests, each concurrent with everything before it."""
    return [retried("x", i, f"other-{i}") for i in range(1, count + 1)]


def test_regression_a_key_never_forgets_the_request_of_a_version_it_holds() -> None:
    # r1 was written on a (a:1) and retried on b (b:1) and on c (c:1). Here a:1 is kept and b:1
    # dropped as its twin; then more requests than a key remembers pushed r1's mark out. c:1
    # then replaced a:1 (the key no longer knew it for a twin), and b:1, sent again, was taken
    # for an attempt of a superseded request: it removed c:1, and r1 was gone from the node
    # with nothing that saw it. A node that remembered r1 holds a:1.
    first = deliver(
        [retried("a", 1, "r1"), retried("b", 1, "r1"), *other_requests(REQUEST_MARKS_PER_KEY + 1)]
    )
    state = deliver([retried("c", 1, "r1"), retried("b", 1, "r1")], first)
    assert Dot("a", 1) in {v.dot for v in state.versions}
    assert [v.dot for v in state.versions if v.request_id == "r1"] == [Dot("a", 1)]
    mark = state.request("r1")
    assert mark is not None and set(mark.dots) == {Dot("a", 1), Dot("b", 1), Dot("c", 1)}
    # Every version the key holds keeps its request's mark (these siblings all stand).
    assert all(state.request(v.request_id) is not None for v in state.versions)


def test_regression_a_twin_of_a_version_held_without_its_mark_keeps_the_smaller_dot() -> None:
    # A state stored before keys kept the ids of the versions they hold may have no mark for
    # one. An attempt with a larger dot replaced the kept one there, whatever the order: that
    # node held b:1 for good, every other a:1.
    held = replace(deliver([retried("a", 1, "r1")]), requests=())
    state = apply(held, retried("b", 1, "r1")).state
    assert [v.dot for v in state.versions] == [Dot("a", 1)]
    assert state == deliver([retried("b", 1, "r1")], apply(held, retried("b", 1, "r1")).state)
    reference = deliver([retried("a", 1, "r1"), retried("b", 1, "r1")])
    assert state.versions == reference.versions and state.context == reference.context


# More examples than the other laws: a loss here needs a forgotten id, a third attempt and a
# twin sent again, which 120 histories seldom draw.
@settings(max_examples=800, deadline=None, print_blob=True)
@given(history_and_deliveries(replicas=2, request_ids=True), st.sampled_from([1, 2, 3]))
def test_a_key_that_forgets_request_ids_never_drops_a_write_nothing_saw(
    case: tuple[History, list[list[Mutation]]], marks_max: int
) -> None:
    # With a key remembering few ids (the bound is REQUEST_MARKS_PER_KEY in service), twins may
    # both stay, but after every arrival a client write stays until a write whose context
    # covered one of its attempts has arrived.
    _, orders = case
    with patch.object(causality, "REQUEST_MARKS_PER_KEY", marks_max):
        for order in orders:
            state: KeyState | None = None
            for i, m in enumerate(order):
                state = apply(state, m).state
                received = order[: i + 1]
                superseded = set().union(*(events(r.context) for r in received))
                held = {v.request_id or v.dot for v in state.versions}
                for r in received:
                    write = r.version.request_id or r.version.dot
                    if not attempts(order, r.version) & superseded:
                        assert write in held, (write, state)


# -- marks through merge (a restore into a key the store holds) ---------------------------------


def test_regression_a_merge_keeps_the_marks_of_both_sides() -> None:
    # merge() kept no request marks: after a restore into a key the store held (a region's
    # MongoDB database holding its other daemons' records), a third attempt of r1 found a:1
    # without a mark and made one of a:1 and c:1 alone; b:1, met before and sent again, was then
    # taken for an attempt of a superseded request and removed a:1: the write was gone from the
    # node, and every peer kept it.
    a1, b1, c1 = retried("a", 1, "r1"), retried("b", 1, "r1"), retried("c", 1, "r1")
    merged = merge(deliver([a1, b1]), KeyState())
    mark = merged.request("r1")
    assert mark is not None and mark.dots == (Dot("a", 1), Dot("b", 1))
    state = deliver([c1, b1], merged)
    assert [v.dot for v in state.versions] == [Dot("a", 1)]
    assert converged(state, deliver([a1, b1, c1]))


def test_regression_a_withdrawal_from_a_merged_state_takes_the_twins_along() -> None:
    # Without the marks a merge dropped, withdraw() could not know b:1 for a:1's twin: b:1 stayed
    # in the context, and a client write there superseded a:1 everywhere else.
    a1, b1 = retried("a", 1, "r1"), retried("b", 1, "r1")
    elsewhere = deliver([a1, b1])
    here = withdraw(merge(KeyState(), deliver([a1, b1])), [Dot("a", 1)], "eu")
    write, _ = local_write(
        here,
        namespace="ns",
        key="k",
        node_id="eu",
        supersedes=here.context,
        version=Version(Dot("eu", 0), b"new", hlc=5),
    )
    assert Dot("a", 1) in {v.dot for v in apply(elsewhere, write).state.versions}


def test_regression_a_version_held_without_a_mark_is_never_removed_by_an_attempt_arriving_covered() -> None:
    # A state stored before keys kept the ids of the versions they hold may hold a:1 without its
    # mark, after b:1 was met and dropped as its twin. The mark a later attempt makes is partial:
    # b:1 sent again may have been applied here, so it does not prove r1 superseded.
    a1, b1, c1 = retried("a", 1, "r1"), retried("b", 1, "r1"), retried("c", 1, "r1")
    stored = replace(deliver([a1, b1]), requests=())
    state = deliver([c1, b1], stored)
    assert [v.dot for v in state.versions] == [Dot("a", 1)]
    mark = state.request("r1")
    assert mark is not None and mark.partial
    assert set(mark.dots) == {Dot("a", 1), Dot("b", 1), Dot("c", 1)}
    # Negative control: the same with a complete mark naming a:1 alone (b:1 never met here)
    # is a write superseded elsewhere (a context covered b:1): the kept twin goes.
    superseded = KeyState(stored.versions, stored.context, (RequestMark("r1", (Dot("a", 1),), 1),))
    assert deliver([b1], superseded).versions == ()


@LAWS
@given(st.lists(st.tuples(node_ids, st.sampled_from(["", "r1", "r2"])), max_size=6), st.data())
def test_merge_joins_marks_commutatively_associatively_and_idempotently(
    writes: list[tuple[str, str]], data: st.DataObject
) -> None:
    mutations = [retried(node, i + 1, rid) for i, (node, rid) in enumerate(writes)]
    parts = [
        deliver(data.draw(st.lists(st.sampled_from(mutations), max_size=4))) if mutations else KeyState()
        for _ in range(3)
    ]
    a, b, c = parts
    assert merge(a, b) == merge(b, a)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))
    assert merge(a, a) == a
    for part in parts:
        for mark in part.requests:
            joined = merge(a, merge(b, c)).request(mark.request_id)
            assert joined is not None and set(mark.dots) <= set(joined.dots)


@HISTORY_LAWS
@given(history_and_deliveries(replicas=2, request_ids=True), st.data())
def test_states_merged_from_parts_then_sent_every_mutation_converge_with_retried_writes(
    case: tuple[History, list[list[Mutation]]], data: st.DataObject
) -> None:
    # A restore merges states; the mutations may then arrive again, in any order.
    history, orders = case
    reference = deliver(history.mutations)
    order = orders[0]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=3)))
    parts = [deliver(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    merged = functools.reduce(merge, parts, KeyState())
    assert set(merged.versions) <= set(reference.versions) | {v for p in parts for v in p.versions}
    assert converged(deliver(orders[1], merged), reference)
