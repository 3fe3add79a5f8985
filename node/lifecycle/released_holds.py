"""The legal holds released while they kept records of erased subjects: which ones a node still
has to act on, kept in its store across restarts, and where the records they kept are.

A hold stops an erasure of what it covers (GDPR Art. 17(3)(e)); once it is released nothing
defers that erasure any more, so the node erases what the hold kept of every subject erased
before (node/lifecycle/erasure.py, Eraser.carry_out_release). A release is noted in the store
before the set of holds without it is, so a crash between the two, or during the erasure,
leaves the release to carry out at the next start.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from domicile.causality import KeyState
from domicile.subjects import HoldRelease, HoldScope, LegalHold
from domicile.wire.records import key_state_from_bytes
from node.engine.base import StorageEngine

RELEASES_META = "released_holds_pending"
# Key states read per page while looking through a held namespace.
STATES_PER_PAGE = 500


@dataclass(frozen=True)
class PendingRelease:
    """A released hold whose kept records this node has not erased yet, and who released it
    (the DPO's verified identity, or "coordinator" when the orders no longer said)."""

    hold: LegalHold
    released_by: str


def released_holds(
    before: tuple[LegalHold, ...], after: tuple[LegalHold, ...], released: tuple[HoldRelease, ...]
) -> tuple[list[PendingRelease], list[LegalHold]]:
    """The holds in `before` that `after` no longer has: those the orders name as released,
    each with who released it, and those they do not. Only an explicit release lets an erasure
    go on: a hold can also vanish from a set without one (a coordinator restored to a point
    before it was placed, a node away for more releases than the orders carry), and destroying
    what it kept cannot be undone, so such a hold's records stay kept (the caller logs it)."""
    kept = {h.hold_id for h in after}
    by = {r.hold_id: r.released_by for r in released}
    gone = [h for h in before if h.hold_id not in kept]
    explicit = [PendingRelease(h, by[h.hold_id] or "coordinator") for h in gone if h.hold_id in by]
    return explicit, [h for h in gone if h.hold_id not in by]


def releases_to_bytes(pending: dict[str, PendingRelease]) -> bytes:
    rows = {
        hold_id: {
            "scope": int(p.hold.scope),
            "subject_id": p.hold.subject_id,
            "namespace": p.hold.namespace,
            "key": p.hold.key,
            "reason": p.hold.reason,
            "placed_ms": p.hold.placed_ms,
            "placed_by": p.hold.placed_by,
            "released_by": p.released_by,
        }
        for hold_id, p in pending.items()
    }
    return json.dumps(rows, sort_keys=True).encode()


def releases_from_bytes(raw: bytes | None) -> dict[str, PendingRelease]:
    out: dict[str, PendingRelease] = {}
    for hold_id, row in json.loads(raw or b"{}").items():
        try:
            scope = HoldScope(int(row["scope"]))
        except ValueError:
            # A scope this version does not know: like LegalHold.covers, fail safe (look
            # everywhere) rather than lose the release.
            scope = HoldScope.UNSPECIFIED
        hold = LegalHold(
            hold_id=str(hold_id),
            scope=scope,
            subject_id=str(row["subject_id"]),
            namespace=str(row["namespace"]),
            key=str(row["key"]),
            reason=str(row["reason"]),
            placed_ms=int(row["placed_ms"]),
            placed_by=str(row["placed_by"]),
        )
        out[str(hold_id)] = PendingRelease(hold, str(row["released_by"]))
    return out


def erased_subjects_held_by(
    engine: StorageEngine, hold: LegalHold, erased_by: Callable[[str], str]
) -> dict[str, str]:
    """Subject id -> erasure request of every erased subject with a record the hold covered
    (live, or tombstoned since). Reads only what the hold covered: the subject's keys, the key,
    or the namespace (a scope this version does not know covered everything). Blocks (store
    reads)."""
    if hold.scope is HoldScope.SUBJECT:
        request_id = erased_by(hold.subject_id)
        return {hold.subject_id: request_id} if request_id else {}
    found: dict[str, str] = {}
    seen: set[str] = set()

    def note(namespace: str, key: str, state: KeyState) -> None:
        # Tombstones too: another region's pass (or this node's, cut short before the keys were
        # destroyed) may have erased the records already; the subject's keys still have to go.
        for version in state.versions:
            subject = version.subject_id
            if not subject or subject in seen or not hold.covers(namespace, key, subject):
                continue
            seen.add(subject)
            request_id = erased_by(subject)
            if request_id:
                found[subject] = request_id

    if hold.scope is HoldScope.KEY:
        state = engine.get(hold.namespace, hold.key)
        if state is not None:
            note(hold.namespace, hold.key, state)
    elif hold.scope is HoldScope.NAMESPACE:
        after = ""
        while page := engine.states_after(hold.namespace, after, STATES_PER_PAGE):
            for key, state in page:
                note(hold.namespace, key, state)
            after = page[-1][0]
    else:
        with engine.snapshot() as rows:
            for namespace, key, blob in rows:
                note(namespace, key, key_state_from_bytes(blob))
    return found
