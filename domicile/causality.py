"""Causality: dots, causal contexts, versions and the per-key state they form.

The model is Riak's dotted version vectors. Every write accepted by a node gets a *dot*
(node_id, counter), unique for the key. A *causal context* is a set of dots, stored as a
contiguous version vector plus a few dots beyond it (they arrive out of order). A write carries
the context it supersedes; a node's state for a key keeps every version whose dot no received
context covers, plus the union of everything seen. Applying the same writes in any order, with
duplicates, gives the same state: the state is a join-semilattice and every function here is
pure, so the property tests can check exactly that.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from domicile.model import Classification, ConflictMode


@dataclass(frozen=True, order=True)
class Dot:
    """The counter-th write accepted by node node_id for one key."""

    node_id: str
    counter: int


@dataclass(frozen=True)
class CausalContext:
    """A set of dots: {(n, i) | 1 <= i <= vv[n]} plus `dots`. Always kept compact: no dot in
    `dots` is covered by `vv` or could extend it."""

    vv: Mapping[str, int] = field(default_factory=dict)
    dots: frozenset[Dot] = frozenset()

    @staticmethod
    def empty() -> CausalContext:
        return _EMPTY

    @staticmethod
    def of(vv: Mapping[str, int] | None = None, dots: Iterable[Dot] = ()) -> CausalContext:
        return CausalContext._compact(dict(vv or {}), set(dots))

    @staticmethod
    def _compact(vv: dict[str, int], dots: set[Dot]) -> CausalContext:
        vv = {n: c for n, c in vv.items() if c > 0}
        if not dots:
            # The common case (in-order delivery): nothing to fold, skip the sort of dots.
            return CausalContext(dict(sorted(vv.items())), frozenset())
        # Fold dots into the vector while they extend it contiguously.
        for dot in sorted(dots):
            if dot.counter == vv.get(dot.node_id, 0) + 1:
                vv[dot.node_id] = dot.counter
        rest = frozenset(d for d in dots if d.counter > vv.get(d.node_id, 0))
        return CausalContext(dict(sorted(vv.items())), rest)

    def covers(self, dot: Dot) -> bool:
        return dot.counter <= self.vv.get(dot.node_id, 0) or dot in self.dots

    def max_counter(self, node_id: str) -> int:
        top = self.vv.get(node_id, 0)
        if not self.dots:
            return top
        return max(top, max((d.counter for d in self.dots if d.node_id == node_id), default=0))

    def join(self, other: CausalContext) -> CausalContext:
        if not other.vv and not other.dots:
            return self
        if not self.vv and not self.dots:
            return other  # contexts are kept compact: the join with nothing is the other
        vv = dict(self.vv)
        for node, counter in other.vv.items():
            if counter > vv.get(node, 0):
                vv[node] = counter
        return CausalContext._compact(vv, set(self.dots) | set(other.dots))

    def add(self, dot: Dot) -> CausalContext:
        top = self.vv.get(dot.node_id, 0)
        if dot.counter <= top:
            return self  # already covered: a compact context stays as it is
        if not self.dots and dot.counter == top + 1:
            # The common case, a node's next event with nothing out of order to fold: the
            # vector just grows, without building and compacting a context of the one dot.
            vv = dict(self.vv)
            vv[dot.node_id] = dot.counter
            return CausalContext(vv if top else dict(sorted(vv.items())), frozenset())
        return self.join(CausalContext(dots=frozenset([dot])))

    def leq(self, other: CausalContext) -> bool:
        """True when every event in self is also in other (the causal partial order)."""
        for node, counter in self.vv.items():
            top = other.vv.get(node, 0)
            if counter > top and not all(Dot(node, i) in other.dots for i in range(top + 1, counter + 1)):
                return False
        return all(other.covers(d) for d in self.dots)

    def is_empty(self) -> bool:
        return not self.vv and not self.dots

    def event_count(self) -> int:
        return sum(self.vv.values()) + len(self.dots)


_EMPTY = CausalContext()


@dataclass(frozen=True)
class Version:
    """One version of a record: a value or a tombstone written at one node."""

    dot: Dot
    value: bytes
    hlc: int
    tombstone: bool = False
    content_type: str = ""
    subject_id: str = ""
    subject_jurisdiction: str = ""
    classification: Classification = Classification.UNSPECIFIED
    checksum: bytes = b""
    origin_region: str = ""
    # The client's id of the logical write (empty: the client gave none). A retry carries the
    # same id, possibly to another node; see apply() for how duplicates are dropped.
    request_id: str = ""

    def checksum_ok(self) -> bool:
        return self.checksum == sha256(self.value)


@dataclass(frozen=True)
class Mutation:
    """A write event as replicated: the new version and the context it supersedes."""

    namespace: str
    key: str
    context: CausalContext
    version: Version
    lsn: int = 0
    origin_node_id: str = ""


# How many client request ids a key remembers, and for how long (by the HLC of the newest
# write): long past any client's retries, which last seconds.
REQUEST_MARKS_PER_KEY = 16
REQUEST_WINDOW_MS = 10 * 60 * 1000


@dataclass(frozen=True)
class RequestMark:
    """A client write's request id and the version it made: a retry of the same id is answered
    with it instead of writing again. `dots` are every version made with the id (a retry on
    another node makes a second), smallest first: the first is the one kept, the others are its
    twins, and a context that supersedes any of them supersedes it. lsn and had_live are known
    where the kept version was written (0 and False elsewhere). `partial`: made for a version
    the key held without a mark (a state stored before a key kept the ids of the versions it
    holds), so it may lack attempts this node met before (see _arrived_superseded)."""

    request_id: str
    dots: tuple[Dot, ...]
    hlc: int
    lsn: int = 0
    had_live: bool = False
    partial: bool = False
    # What the write was, where it was written (see node.engine.base.LocalWrite.request_digest):
    # empty where the mark was made from a replicated version.
    digest: bytes = b""

    @property
    def dot(self) -> Dot:
        return self.dots[0]


@dataclass(frozen=True)
class KeyState:
    """What a node holds for one key."""

    versions: tuple[Version, ...] = ()
    context: CausalContext = _EMPTY
    # The request ids of recent writes to the key, newest last (bounded: see _remember).
    requests: tuple[RequestMark, ...] = ()

    def request(self, request_id: str) -> RequestMark | None:
        return next((m for m in self.requests if m.request_id == request_id), None)

    def live(self) -> tuple[Version, ...]:
        return tuple(v for v in self.versions if not v.tombstone)

    def has_live(self) -> bool:
        return any(not v.tombstone for v in self.versions)


def sha256(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


@dataclass(frozen=True)
class Applied:
    """Result of applying a mutation to a key state."""

    state: KeyState
    changed: bool
    # True when the mutation left more than one version standing: concurrent writes.
    conflict: bool


def apply(state: KeyState | None, mutation: Mutation) -> Applied:
    """Applies a write event. Idempotent; the result does not depend on arrival order.

    A client that retried a write on another node makes two versions of one logical write, with
    one request id and two dots. Of such a pair every node keeps the version with the smaller
    dot and covers the other; a duplicate of a version already superseded is dropped. So each
    node ends with the same one version whichever arrives first, as long as the key still
    remembers the id (REQUEST_MARKS_PER_KEY, REQUEST_WINDOW_MS; a key never forgets the id of
    a version it holds, see _remember)."""
    version = mutation.version
    dot = version.dot
    if state is None:
        # A key this node never held (most writes of a bulk load): the version is all there is,
        # so the general merge below reduces to this without its intermediate objects.
        marks = (RequestMark(version.request_id, (dot,), version.hlc),) if version.request_id else ()
        return Applied(KeyState((version,), mutation.context.add(dot), marks), changed=True, conflict=False)
    if state.context.covers(dot):
        # Already applied, or superseded by a write that has already arrived.
        return _arrived_superseded(state, mutation)
    kept = [v for v in state.versions if not _supersedes(mutation.context, v, state)]
    context = state.context.join(mutation.context).add(dot)
    requests = state.requests
    if version.request_id:
        rid = version.request_id
        prior = state.request(rid)
        twin = next((v for v in kept if v.request_id == rid), None)
        dots = tuple(sorted({*(prior.dots if prior else ()), *((twin.dot,) if twin else ()), dot}))
        if (twin is None and prior is not None) or (twin is not None and twin.dot < dot):
            # A duplicate of a version kept here (smaller dot) or already superseded: dropped. A
            # kept twin without a mark (a state merged from elsewhere, or stored before a key
            # kept the ids of the versions it holds) is taken for what its mark would say: the
            # key forgot the id, not the write, and every node keeps the smaller dot.
            mark = (
                replace(prior, dots=dots)
                if prior
                else RequestMark(rid, dots, twin.hlc if twin else version.hlc, partial=True)
            )
            kept.sort(key=lambda v: v.dot)
            requests = _remember(requests, mark, _held_requests(kept))
            return Applied(KeyState(tuple(kept), context, requests), changed=True, conflict=len(kept) > 1)
        if twin is not None:
            kept.remove(twin)  # the incoming duplicate has the smaller dot
        kept.append(version)
        # A twin held without a mark: what the key met of the request before is not known.
        partial = prior.partial if prior else twin is not None
        digest = prior.digest if prior else b""
        requests = _remember(
            requests,
            RequestMark(rid, dots, version.hlc, partial=partial, digest=digest),
            _held_requests(kept),
        )
    else:
        kept.append(version)
    kept.sort(key=lambda v: v.dot)
    return Applied(KeyState(tuple(kept), context, requests), changed=True, conflict=len(kept) > 1)


def _arrived_superseded(state: KeyState, mutation: Mutation) -> Applied:
    """A mutation whose dot the state has seen already: a duplicate, or a version superseded by
    a write that arrived first. Its context still counts (as merge() counts it): a context
    from a retry's answer names the kept version alone, not what that version superseded, so
    a write passing it back could reach a node ahead of the version, which then brought nothing.

    And a version of a client request that the key's marks do not name was never applied
    here while the key remembered the request: a context covering it arrived first (a write
    that superseded it, or an anti-entropy pull of a state that had). The mark names the dot
    from now on, so that a twin arriving later is dropped as one of a superseded request. Where
    the key remembers the request, the version it keeps of it goes too: nothing here knew the
    dot for a twin when that context came, so it could not supersede it then. That holds because a
    key never forgets the id of a version it holds (_remember, and merge keeps the marks of both
    sides): the mark of such a request names every attempt this node met since it held one.
    Without a mark the key holds no version of the request, unless the state was stored before
    that rule (the mark was forgotten, and the dot may be one applied long ago): such a version
    stays, and the mark made now names it too but is partial: the attempts it lacks may have
    been applied here, so none arriving later removes the version either. Each node ends as
    where the versions arrived in the other order."""
    version = mutation.version
    rid = version.request_id
    if not rid:
        if mutation.context.leq(state.context):
            return Applied(state, changed=False, conflict=False)
        return _superseded_by(state, mutation.context, None, twin_superseded="")
    prior = state.request(rid)
    if (prior is not None and version.dot in prior.dots) or any(v.dot == version.dot for v in state.versions):
        # A duplicate, or an attempt the mark names already: only its context may count.
        if mutation.context.leq(state.context):
            return Applied(state, changed=False, conflict=False)
        return _superseded_by(state, mutation.context, None, twin_superseded="")
    held = next((v for v in state.versions if v.request_id == rid), None)
    forgot = (held.dot,) if prior is None and held is not None else ()
    dots = tuple(sorted({*(prior.dots if prior else ()), *forgot, version.dot}))
    if prior is not None:
        mark = replace(prior, dots=dots)
    else:
        mark = RequestMark(rid, dots, held.hlc if held else version.hlc, partial=held is not None)
    complete = prior is not None and not prior.partial
    return _superseded_by(state, mutation.context, mark, rid if complete else "")


def _superseded_by(
    state: KeyState, context: CausalContext, mark: RequestMark | None, twin_superseded: str
) -> Applied:
    """The state once `context` has arrived, with `mark` new or extended (if any), and without
    the versions of request `twin_superseded` (if any); unchanged when nothing of it changes."""
    requests = state.requests if mark is None else _with_mark(state.requests, mark)
    marked = KeyState(state.versions, state.context, requests)
    kept = tuple(
        v
        for v in state.versions
        if not (twin_superseded and v.request_id == twin_superseded) and not _supersedes(context, v, marked)
    )
    if mark is not None:
        requests = _remember(state.requests, mark, _held_requests(kept))
    after = KeyState(kept, state.context.join(context), requests)
    if after == state:
        return Applied(state, changed=False, conflict=False)
    return Applied(after, changed=True, conflict=len(kept) > 1)


def _supersedes(context: CausalContext, v: Version, state: KeyState) -> bool:
    if context.covers(v.dot):
        return True
    # A context that supersedes a twin of v (the same request written on another node)
    # supersedes v: its writer meant that logical write.
    mark = state.request(v.request_id) if v.request_id else None
    return mark is not None and any(context.covers(d) for d in mark.dots)


def _remember(
    requests: tuple[RequestMark, ...], mark: RequestMark, held: frozenset[str]
) -> tuple[RequestMark, ...]:
    """The marks with `mark` in place of any of its id, without those older than the window
    (by HLC, relative to the newest) and with at most REQUEST_MARKS_PER_KEY of the newest; but
    the marks of the requests in `held` (those the key holds a version of) always stay, however
    old or many (the versions themselves bound them). A key that forgot the id of a version it
    holds could no longer tell that version's twins from new writes: an attempt arriving later
    would stand beside it or replace it, and a twin met long ago and forgotten would, arriving
    again, take it for one of a superseded request and remove it (_arrived_superseded)."""
    marks = _with_mark(requests, mark)
    newest = max(m.hlc for m in marks)
    horizon = newest - (REQUEST_WINDOW_MS << 16)
    ordered = sorted(marks, key=_mark_order)
    recent = [m for m in ordered if m.request_id not in held and m.hlc >= horizon]
    keep = held | {m.request_id for m in recent[-REQUEST_MARKS_PER_KEY:]}
    return tuple(m for m in ordered if m.request_id in keep)


def _with_mark(requests: tuple[RequestMark, ...], mark: RequestMark) -> tuple[RequestMark, ...]:
    return (*(m for m in requests if m.request_id != mark.request_id), mark)


def _mark_order(m: RequestMark) -> tuple[int, Dot]:
    return (m.hlc, m.dot)


def _held_requests(versions: Iterable[Version]) -> frozenset[str]:
    return frozenset(v.request_id for v in versions if v.request_id)


def merge(a: KeyState, b: KeyState) -> KeyState:
    """Joins two key states (a restore into a key the store holds already), as apply
    would join their writes. Commutative, associative and idempotent. The request marks of both
    sides are joined (_joined_marks): a key that lost the mark of a version it holds could no
    longer tell that version's twins from new writes (see _remember). A version goes when the
    other side's context covers it, or when either side shows its request superseded
    (_superseded_requests); of the attempts of one request that stay, the smallest dot does,
    as apply keeps it."""
    marks = _joined_marks(a.requests, b.requests)
    superseded = _superseded_requests((a, b), marks)
    kept: dict[Dot, Version] = {}
    for side, other in ((a, b), (b, a)):
        other_dots = {v.dot for v in other.versions}
        for v in side.versions:
            if v.request_id in superseded or (v.dot not in other_dots and other.context.covers(v.dot)):
                continue
            kept.setdefault(v.dot, v)
    versions: list[Version] = []
    requests_kept: set[str] = set()
    for dot in sorted(kept):
        v = kept[dot]
        if v.request_id:
            if v.request_id in requests_kept:
                continue  # a twin of a smaller dot kept already
            requests_kept.add(v.request_id)
        versions.append(v)
    return KeyState(tuple(versions), a.context.join(b.context), marks)


def _superseded_requests(sides: Iterable[KeyState], marks: tuple[RequestMark, ...]) -> set[str]:
    """The requests some side shows superseded: its context covers an attempt (the joined
    marks tell attempts of a request apart) that it does not hold, while it holds no attempt of
    the request, or holds one under a complete mark of its own that does not name that attempt
    (so the attempt was never applied there: it came covered, in the context of a write that
    saw it, as in _arrived_superseded). A side holding an attempt under a mark naming the other
    one met it and dropped it as a twin."""
    out: set[str] = set()
    for side in sides:
        held_dots = {v.dot for v in side.versions}
        held = _held_requests(side.versions)
        for m in marks:
            own = side.request(m.request_id) if m.request_id in held else None
            if m.request_id in held and (own is None or own.partial):
                continue  # which attempts it met cannot be told
            for d in m.dots:
                if d in held_dots or not side.context.covers(d):
                    continue
                if own is None or d not in own.dots:
                    out.add(m.request_id)
                    break
    return out


def _joined_marks(a: tuple[RequestMark, ...], b: tuple[RequestMark, ...]) -> tuple[RequestMark, ...]:
    """Both sides' marks, one per request id: every attempt either met, the earliest HLC, the
    log position and earlier-live flag where known, partial if either is."""
    if not b:
        return a
    if not a:
        return b
    joined = {m.request_id: m for m in a}
    for m in b:
        other = joined.get(m.request_id)
        joined[m.request_id] = (
            m
            if other is None
            else RequestMark(
                m.request_id,
                tuple(sorted({*other.dots, *m.dots})),
                min(other.hlc, m.hlc),
                max(other.lsn, m.lsn),
                other.had_live or m.had_live,
                other.partial or m.partial,
                other.digest or m.digest,
            )
        )
    return tuple(sorted(joined.values(), key=_mark_order))


def context_without(context: CausalContext, dots: Iterable[Dot]) -> CausalContext:
    """The context minus some dots: what a state's versions supersede, so that sending each
    version with it merges exactly the state (merge) and supersedes none of its siblings; also
    what a state has seen once some of its versions are dropped."""
    dots = list(dots)
    vv = dict(context.vv)
    extra = set(context.dots)
    for dot in dots:
        if dot in extra:
            extra.discard(dot)
            continue
        top = vv.get(dot.node_id, 0)
        if dot.counter <= top:
            vv[dot.node_id] = dot.counter - 1
            extra.update(Dot(dot.node_id, i) for i in range(dot.counter + 1, top + 1))
    return CausalContext.of(vv, extra - set(dots))


def next_dot(state: KeyState | None, node_id: str, supersedes: CausalContext) -> Dot:
    """The dot for a new write at node_id: past every counter of node_id seen anywhere, so a
    dot is never reused even when a client's context is ahead of this node's state."""
    seen = state.context.max_counter(node_id) if state else 0
    return Dot(node_id, max(seen, supersedes.max_counter(node_id)) + 1)


def local_write(
    state: KeyState | None,
    *,
    namespace: str,
    key: str,
    node_id: str,
    supersedes: CausalContext | None,
    version: Version,
) -> tuple[Mutation, Applied]:
    """Creates the mutation for a write accepted at node_id and applies it.

    `supersedes` None means "everything this node holds for the key". `version.dot` is
    replaced by the next dot.
    """
    context = supersedes if supersedes is not None else (state.context if state else _EMPTY)
    dot = next_dot(state, node_id, context)
    mutation = Mutation(namespace, key, context, replace(version, dot=dot), origin_node_id=node_id)
    return mutation, apply(state, mutation)


def lww_winner(versions: Iterable[Version]) -> Version | None:
    """The version last-writer-wins keeps: highest HLC, then highest node id, then counter."""
    best: Version | None = None
    for v in versions:
        if best is None or (v.hlc, v.dot.node_id, v.dot.counter) > (
            best.hlc,
            best.dot.node_id,
            best.dot.counter,
        ):
            best = v
    return best


def visible(state: KeyState | None, mode: ConflictMode) -> tuple[Version, ...]:
    """The versions a read returns: every live sibling, or the lww winner when it is live."""
    if state is None:
        return ()
    if mode is ConflictMode.LWW:
        winner = lww_winner(state.versions)
        return (winner,) if winner is not None and not winner.tombstone else ()
    return state.live()


def withdraw(state: KeyState, dots: Iterable[Dot], node_id: str, others: Iterable[str] = ()) -> KeyState:
    """The state without some of its versions, as if node_id had never received them (a copy
    the residency policy no longer lets its region hold). Their dots leave the context too:
    a context naming them would supersede them wherever it travels (a client's next write, an
    anti-entropy pull of the key's other versions), and the copies elsewhere are allowed ones;
    and a later copy, once the region may hold it again, is taken back instead of being
    treated as deleted.

    A withdrawn version's twins (its client write retried on other nodes, see apply) leave the
    context with it, and so does its request mark: wherever the version is kept, a context
    covering a twin supersedes it (_supersedes), so a client here that never saw it would
    overwrite it everywhere; and the mark would make apply drop the version when it comes back,
    as a duplicate of one already superseded. Without the mark a retry of the request here is
    written again: one more twin, which meets the others as any twins do, so every node ends
    with the attempt of the smallest dot (the nodes that remember the request drop the new one
    as a duplicate, unless its dot is the smaller).

    node_id's own counter for the key does not go back, nor do those of `others`, the other
    nodes issuing dots from the same store (the other daemons of a region over one database):
    when one of their dots leaves and the counter would fall, the context keeps a dot one past
    the highest it issued, which no version carries, so the key's next dot is never reused."""
    gone = {v.dot for v in state.versions} & set(dots)
    if not gone:
        return state
    versions = tuple(v for v in state.versions if v.dot not in gone)
    # A request a version still held here carries (twins both kept, possible once the key had
    # forgotten the request) keeps its mark and its dots.
    staying = {v.request_id for v in versions}
    requests = {v.request_id for v in state.versions if v.dot in gone and v.request_id} - staying
    twins = {d for m in state.requests if m.request_id in requests for d in m.dots}
    context = keep_issued(
        state.context, context_without(state.context, sorted(gone | twins)), (node_id, *others)
    )
    return KeyState(versions, context, tuple(m for m in state.requests if m.request_id not in requests))


def keep_issued(before: CausalContext, after: CausalContext, node_ids: Iterable[str]) -> CausalContext:
    """`after` (a context some dots left) with the counters of `node_ids` as high as they were
    in `before`: where one would fall, a dot one past the highest that node issued, which no
    version carries, so the key's next dot of that node is never reused. Only for the nodes
    that issue dots from this very store (this node, the other daemons of its region over one
    database): a placeholder of another region's node would cover its next real write."""
    for node_id in node_ids:
        issued = before.max_counter(node_id)
        if after.max_counter(node_id) < issued:
            after = after.join(CausalContext.of({}, [Dot(node_id, issued + 1)]))
    return after


def issued_counters(context: CausalContext) -> dict[str, int]:
    """The highest counter of each node the context names."""
    counters = dict(context.vv)
    for dot in context.dots:
        if dot.counter > counters.get(dot.node_id, 0):
            counters[dot.node_id] = dot.counter
    return counters
