"""Digest trees for anti-entropy: per namespace, a two-level tree over the key states.

Shape. A key falls in one of BUCKETS buckets, named by the first bytes of a hash of the key
(hash buckets, so every bucket holds about the same share of any key set). A key's digest is
a 16-byte BLAKE2b of what makes its state: its causal context and the dot, HLC and tombstone
flag of each version it keeps. The value is left out on purpose: a dot names one write, so two
replicas holding the same dots hold the same values, while the stored bytes differ between
regions (each seals under its own keys). A bucket's digest is the XOR of its keys' digests, and
the root is a hash of the bucket digests in order. Two replicas compare roots, then buckets,
then the key digests of the buckets that differ, and exchange only the keys that differ.

Incremental. XOR lets one key's change move its bucket's digest without reading the bucket:
old digest out, new digest in. The per-key digests (and the placement facts the policy needs:
classification, subject, jurisdiction) live in a side SQLite file in the data directory, not in
memory: memory holds only BUCKETS digests and counts per namespace, plus a bounded set of keys
marked dirty. Every local commit (read back from the change log) and every replicated or
repaired apply marks its keys; `refresh` re-reads the marked keys' states and moves their
buckets (`refresh_step` does it a bounded number of keys at a time, so that a caller on an
event loop can pace a large refresh, node.replication.entropy). When more than `dirty_max` keys
wait, or the change log was truncated past what the tree has read, the tree is rebuilt from the
engine's snapshot instead; the truncator lets the tree read what it is about to delete first
(`follow`), so the latter does not happen. A rebuild replaces the trees in use only once it has
read the whole snapshot; one the store fails leaves them as they were, marked for a rebuild at
the next refresh. The side file is a cache: it is rebuilt from the store at every start, so it
needs no durability of its own (and a restored store can never leave a stale tree behind).

Threading: every method that reads the store or the side file blocks (call it off the event
loop); `mark` is cheap and may be called from any thread. One lock serialises the rest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from domicile.causality import Dot, KeyState, Version, sha256
from domicile.model import Classification
from domicile.policy import RecordFacts
from domicile.v1 import record_pb2
from domicile.wire.records import key_state_from_bytes
from node.engine.base import GET_MANY_KEYS_MAX, StorageEngine
from node.engine.core import decode_state
from node.engine.log_tail import LogTail

BUCKETS = 1024
DIGESTS_FILE = "digests.sqlite3"
DIGEST_BYTES = 16
DIRTY_KEYS_MAX_DEFAULT = 100_000
_ZERO = bytes(DIGEST_BYTES)
_INSERT_BATCH = 5_000
# Keyed by bucket before key: a bucket's leaves are read in key order from the table itself, and
# since a key's bucket follows from the key, a key is found by both; no second index to keep up
# at every leaf written.
_LEAF_COLUMNS = (
    "(ns TEXT NOT NULL, key TEXT NOT NULL, bucket INTEGER NOT NULL, digest BLOB NOT NULL, "
    "facts TEXT NOT NULL, PRIMARY KEY (ns, bucket, key)) WITHOUT ROWID"
)
# Keys per query when a refresh reads the digests its keys had (SQLite allows 32,766 variables).
_SELECT_KEYS = 500
# Distinct facts texts remembered (most keys share a few facts; keys about data subjects each
# have their own, so the memo is bounded).
_FACTS_TEXTS_MAX = 4_096
_COUNTER_LIMIT = 1 << 62
_CLASSIFICATIONS = frozenset(int(c) for c in Classification)

# A version's placement facts as stored: classification, subject id, subject jurisdiction.
FactsKey = tuple[int, str, str]
# What a key's digest takes of a version: its dot's node and counter, HLC, tombstone flag.
_DigestVersion = tuple[str, int, int, bool]
# A plain stored state as a digest reads it: version vector, versions, facts.
_PlainState = tuple[list[tuple[str, int]], list[_DigestVersion], tuple[FactsKey, ...]]


def bucket_of(key: str) -> int:
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest[:4], "big") % BUCKETS


def key_digest(namespace: str, key: str, state: KeyState) -> bytes:
    """The digest of a key's state: equal on two replicas exactly when they hold the same dots
    in the same context (see the module doc for why the value is not hashed)."""
    return _digest(
        namespace,
        key,
        sorted(state.context.vv.items()),
        [(d.node_id, d.counter) for d in sorted(state.context.dots)],
        [(v.dot.node_id, v.dot.counter, v.hlc, v.tombstone) for v in sorted(state.versions, key=_dot_of)],
    )


def _digest(
    namespace: str,
    key: str,
    vv: Iterable[tuple[str, int]],
    dots: Iterable[tuple[str, int]],
    versions: Iterable[_DigestVersion],
) -> bytes:
    # One text hashed at once: the same bytes, in the same order, as one update per part.
    parts = [namespace, "\x00", key, "\x00"]
    parts += [f"v{node}\x00{counter}\x00" for node, counter in vv]
    parts += [f"d{node}\x00{counter}\x00" for node, counter in dots]
    parts += [
        f"k{node}\x00{counter}\x00{hlc}\x00{int(tombstone)}\x00" for node, counter, hlc, tombstone in versions
    ]
    return hashlib.blake2b("".join(parts).encode("utf-8"), digest_size=DIGEST_BYTES).digest()


def stored_leaf(namespace: str, key: str, blob: bytes) -> tuple[bytes, tuple[FactsKey, ...]]:
    """A stored key state's digest and facts (key_digest and facts_of of the decoded state),
    read from its protobuf form without building the state: a refresh reads tens of thousands
    of states, and building each one's versions and context cost more than the rest of its
    upkeep. Checked as the engine's get_many checks a state (its context, classifications and
    checksums); a state that is not plain (out-of-order dots in its context, which decoding
    compacts) or fails a check is decoded by the engine's get_many path instead, which compacts
    it or raises what get_many raises."""
    read = _read_plain(blob)
    if read is None:
        state = decode_state(namespace, key, blob)
        return key_digest(namespace, key, state), _facts_keys(namespace, state)
    vv, versions, facts = read
    return _digest(namespace, key, vv, (), versions), facts


def _read_plain(blob: bytes) -> _PlainState | None:
    """A plain state's version vector and versions (both in digest order) and facts, or None
    when decoding it would fail or change its context: dots beyond the version vector (which
    decoding compacts), invalid vector entries, unknown classifications or checksums that do
    not match (what context_from_pb, version_from_pb and the engine's decode_state check)."""
    try:
        msg = record_pb2.KeyState.FromString(blob)
    except DecodeError:
        return None
    context = msg.context
    if context.dots:
        return None
    vv = sorted(context.version_vector.items())
    for node, counter in vv:
        if not node or len(node) > 63 or counter == 0 or counter >= _COUNTER_LIMIT:
            return None
    versions: list[_DigestVersion] = []
    facts: dict[FactsKey, None] = {}
    for v in msg.versions:
        classification = v.classification
        if classification not in _CLASSIFICATIONS or sha256(v.value) != v.checksum_sha256:
            return None
        dot = v.dot
        versions.append((dot.node_id, dot.counter, v.hlc, v.tombstone))
        facts[(classification, v.subject_id, v.subject_jurisdiction)] = None
    if len(versions) > 1:
        versions.sort(key=_by_dot)
    return vv, versions, tuple(facts)


def _page_leaves(
    engine: StorageEngine, namespace: str, page: Sequence[str]
) -> list[tuple[str, tuple[bytes, tuple[FactsKey, ...]] | None]]:
    """The leaves of a page of keys (None: the key is gone), every one of them before the tree
    changes: a state that fails its checks leaves the tree as it was."""
    stored = engine.get_many_stored(namespace, page)
    return [(key, None if (b := stored.get(key)) is None else stored_leaf(namespace, key, b)) for key in page]


def _dot_of(version: Version) -> Dot:
    return version.dot


def _by_dot(version: _DigestVersion) -> tuple[str, int]:
    return version[0], version[1]


def facts_of(namespace: str, state: KeyState) -> tuple[RecordFacts, ...]:
    """What the policy decides a key's placement by, once per distinct version facts."""
    seen = dict.fromkeys(
        RecordFacts(namespace, v.classification, v.subject_id, v.subject_jurisdiction) for v in state.versions
    )
    return tuple(seen)


def _facts_keys(namespace: str, state: KeyState) -> tuple[FactsKey, ...]:
    facts = facts_of(namespace, state)
    return tuple((int(f.classification), f.subject_id, f.subject_jurisdiction) for f in facts)


def _facts_text(facts: Sequence[FactsKey]) -> str:
    return json.dumps([list(f) for f in facts])


def _facts_from_text(namespace: str, text: str) -> tuple[RecordFacts, ...]:
    return tuple(
        RecordFacts(namespace, Classification(c), subject, jurisdiction)
        for c, subject, jurisdiction in json.loads(text)
    )


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(DIGEST_BYTES, "big")


@dataclass(frozen=True)
class Leaf:
    key: str
    digest: bytes
    facts: tuple[RecordFacts, ...]


@dataclass(frozen=True)
class TreeView:
    """One namespace's tree as of one moment."""

    root: bytes
    buckets: tuple[bytes, ...]
    counts: tuple[int, ...]  # keys per bucket

    @property
    def key_count(self) -> int:
        return sum(self.counts)


def root_of(buckets: Sequence[bytes]) -> bytes:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for b in buckets:
        h.update(b)
    return h.digest()


class _Namespace:
    def __init__(self) -> None:
        self.digests = [_ZERO] * BUCKETS
        self.counts = [0] * BUCKETS

    def view(self) -> TreeView:
        return TreeView(root_of(self.digests), tuple(self.digests), tuple(self.counts))


class DigestTrees:
    """The digest trees of every namespace this node holds."""

    def __init__(
        self, path: Path, *, dirty_max: int = DIRTY_KEYS_MAX_DEFAULT, log_tail: LogTail | None = None
    ) -> None:
        self.path = path
        self.dirty_max = dirty_max
        # The newest change-log entries in memory: following the log reads them there when it
        # holds them, instead of reading and decoding them from the store again.
        self.log_tail = log_tail
        self._lock = threading.Lock()
        self._dirty_lock = threading.Lock()
        self._dirty: set[tuple[str, str]] = set()
        self._stale = True  # nothing built yet
        self._trees: dict[str, _Namespace] = {}
        # Local commits are read back from the change log after this position.
        self.log_position = 0
        self.rebuilds = 0
        self._facts_texts: dict[tuple[FactsKey, ...], str] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # A cache rebuilt at every start: no journal, no fsync.
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"CREATE TABLE leaf {_LEAF_COLUMNS}")

    # -- marking -----------------------------------------------------------------------------

    def mark(self, keys: Iterable[tuple[str, str]]) -> None:
        """Keys whose state changed; their digests are recomputed at the next refresh."""
        with self._dirty_lock:
            if self._stale:
                return
            self._dirty.update(keys)
            if len(self._dirty) > self.dirty_max:
                # Cheaper to rebuild than to hold every marked key: memory stays bounded.
                self._dirty.clear()
                self._stale = True

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    # -- bringing up to date (blocking) ------------------------------------------------------

    def refresh(self, engine: StorageEngine) -> None:
        """Brings every tree up to date with the store: the local commits since the last
        refresh, the marked keys, or a whole rebuild when the tree is stale. Blocks."""
        self.refresh_step(engine, None)

    def refresh_step(self, engine: StorageEngine, keys_max: int | None) -> int:
        """`refresh`, recomputing at most `keys_max` of the marked keys (None: all of them);
        returns how many stay marked. Recomputing tens of thousands of keys at once (50 us of
        interpreter each) held the interpreter for seconds, and the event loop with it: a node
        that had taken a large batch stalled at its next anti-entropy round. Keys taken by a
        step are recomputed from the store's state as of that step, so the steps of one refresh
        give the trees one refresh would. Blocks."""
        with self._lock:
            with self._dirty_lock:
                # Cleared before the rebuild, so that keys marked while it reads the snapshot
                # are kept; a rebuild that fails marks the trees stale again (_rebuild).
                stale = self._stale
                self._stale = False
                if stale:
                    self._dirty.clear()
            if stale:
                self._rebuild(engine)
                return self.dirty_count
            self._follow_log(engine)
            with self._dirty_lock:
                stale, self._stale = self._stale, False
                if stale:
                    self._dirty.clear()
                if keys_max is None or len(self._dirty) <= keys_max:
                    dirty, self._dirty = self._dirty, set()
                else:
                    dirty = set(itertools.islice(self._dirty, keys_max))
                    self._dirty -= dirty
            if stale:
                # The log held more keys than dirty_max: cheaper to rebuild.
                self._rebuild(engine)
                return self.dirty_count
            by_namespace: dict[str, list[str]] = {}
            for namespace, key in dirty:
                by_namespace.setdefault(namespace, []).append(key)
            try:
                for namespace, keys in by_namespace.items():
                    for i in range(0, len(keys), GET_MANY_KEYS_MAX):
                        page = keys[i : i + GET_MANY_KEYS_MAX]
                        self._update(namespace, _page_leaves(engine, namespace, page))
            except BaseException:
                # The store failed mid-way: the keys stay marked for the next refresh (those
                # recomputed already are recomputed again, to the same digests).
                self.mark(dirty)
                raise
            return self.dirty_count

    def follow(self, engine: StorageEngine, through: int) -> None:
        """Marks the keys of the local commits up to position `through`, so that the change log
        may be truncated up to there without costing the next refresh a rebuild. Blocks.

        The log is truncated every few seconds, the trees are refreshed at each anti-entropy
        round (a minute apart): a refresh that found the log truncated past its position read
        the whole store again, holding the interpreter for seconds on a large store (each round
        stalled the node's event loop). Marking is all the following does; the digests are
        still recomputed at the next refresh."""
        with self._lock:
            with self._dirty_lock:
                if self._stale:
                    return  # rebuilt at the next refresh anyway
            self._follow_log(engine, through)

    def invalidate(self) -> None:
        """Rebuild from the store at the next refresh (another daemon writes the same store)."""
        with self._dirty_lock:
            self._dirty.clear()
            self._stale = True

    def _follow_log(self, engine: StorageEngine, through: int | None = None) -> None:
        while through is None or self.log_position < through:
            limit = 10_000 if through is None else min(10_000, through - self.log_position)
            held = self.log_tail.read(self.log_position, limit) if self.log_tail is not None else None
            if held is not None:
                entries = held[0]
            else:
                # The last position first: entries after this tree's position that the read
                # then does not find were truncated (positions have no holes).
                last = engine.last_lsn()
                entries = engine.read_log(self.log_position, limit)
                if not entries and last > self.log_position:
                    self._rebuild(engine)
                    return
            if not entries:
                return
            if entries[0].lsn != self.log_position + 1:
                # Truncated past this tree's position: what it missed is only in the store.
                self._rebuild(engine)
                return
            # Through mark(), so that past dirty_max the keys give way to a rebuild: followed
            # between refreshes (a minute apart), a busy node's keys would otherwise pile up.
            self.mark((m.namespace, m.key) for m in entries)
            self.log_position = entries[-1].lsn
            if self._stale:
                return  # the next refresh rebuilds: reading on would mark nothing

    def _rebuild(self, engine: StorageEngine) -> None:
        """Builds every tree again from the store's snapshot, beside the trees in use: those
        (bucket digests, side file, log position) are replaced only once the whole snapshot has
        been read. A rebuild that fails (a store error mid-snapshot: a transient one, or
        MongoDB's limit on a transaction's lifetime on a large store) leaves them as they were,
        consistent with one another, and marks them stale so that the next refresh rebuilds.
        Written in place, a failed rebuild had left a half-filled side file under the old bucket
        digests and a moved log position, all trusted until the process restarted: keys held
        here alone were never offered, and differing buckets were pulled again every round."""
        try:
            position, trees = self._build(engine)
            self._db.execute("DROP TABLE IF EXISTS leaf")
            self._db.execute("ALTER TABLE leaf_build RENAME TO leaf")
        except BaseException:
            self.invalidate()
            raise
        self.log_position = position
        self._trees = trees
        self.rebuilds += 1

    def _build(self, engine: StorageEngine) -> tuple[int, dict[str, _Namespace]]:
        """The log position and bucket digests of the store's snapshot, its leaves written to
        the side file's `leaf_build` table (a rebuild's own, so that the trees in use stay whole
        until it ends)."""
        # The log position first: commits after it are marked and recomputed after the build,
        # whatever moment the snapshot catches them at (recomputing is idempotent).
        position = engine.last_lsn()
        trees: dict[str, _Namespace] = {}
        self._db.execute("DROP TABLE IF EXISTS leaf_build")
        self._db.execute(f"CREATE TABLE leaf_build {_LEAF_COLUMNS}")
        rows: list[tuple[str, str, int, bytes, str]] = []
        with engine.snapshot() as snapshot:
            for namespace, key, blob in snapshot:
                state = key_state_from_bytes(blob)
                digest = key_digest(namespace, key, state)
                bucket = bucket_of(key)
                tree = trees.get(namespace)
                if tree is None:
                    tree = trees[namespace] = _Namespace()
                tree.digests[bucket] = _xor(tree.digests[bucket], digest)
                tree.counts[bucket] += 1
                rows.append((namespace, key, bucket, digest, _facts_text(_facts_keys(namespace, state))))
                if len(rows) >= _INSERT_BATCH:
                    self._insert_built(rows)
                    rows = []
        self._insert_built(rows)
        return position, trees

    def _insert_built(self, rows: list[tuple[str, str, int, bytes, str]]) -> None:
        if rows:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO leaf_build VALUES (?, ?, ?, ?, ?)", rows)
            finally:
                self._db.execute("COMMIT")

    def _update(
        self, namespace: str, leaves: Sequence[tuple[str, tuple[bytes, tuple[FactsKey, ...]] | None]]
    ) -> None:
        """Moves the keys' buckets from the digests the keys had to `leaves` (None: the key is
        gone); the keys are distinct. One query per _SELECT_KEYS keys reads the digests they had,
        and one statement writes them all."""
        tree = self._trees.get(namespace)
        if tree is None:
            tree = self._trees[namespace] = _Namespace()
        placed = [(key, bucket_of(key), leaf) for key, leaf in leaves]
        had = self._had(namespace, [(bucket, key) for key, bucket, _ in placed])
        gone: list[tuple[str, int, str]] = []
        rows: list[tuple[str, str, int, bytes, str]] = []
        for key, bucket, leaf in placed:
            old = had.get(key)
            if old is not None:
                tree.digests[bucket] = _xor(tree.digests[bucket], old)
                tree.counts[bucket] -= 1
            if leaf is None:
                if old is not None:
                    gone.append((namespace, bucket, key))
                continue
            digest, facts = leaf
            tree.digests[bucket] = _xor(tree.digests[bucket], digest)
            tree.counts[bucket] += 1
            rows.append((namespace, key, bucket, digest, self._facts_text(facts)))
        self._db.execute("BEGIN")
        try:
            self._db.executemany("DELETE FROM leaf WHERE ns = ? AND bucket = ? AND key = ?", gone)
            self._db.executemany("INSERT OR REPLACE INTO leaf VALUES (?, ?, ?, ?, ?)", rows)
        finally:
            self._db.execute("COMMIT")

    def _had(self, namespace: str, placed: Sequence[tuple[int, str]]) -> dict[str, bytes]:
        """The digests the keys (with their buckets) have in the side file, by key: one query
        per _SELECT_KEYS keys, each a search of the primary key (the page of keys drives the
        join; a row-value IN would scan the namespace)."""
        had: dict[str, bytes] = {}
        for i in range(0, len(placed), _SELECT_KEYS):
            chunk = placed[i : i + _SELECT_KEYS]
            pairs = ", ".join("(?, ?)" for _ in chunk)
            for key, digest in self._db.execute(
                f"SELECT leaf.key, leaf.digest FROM (VALUES {pairs}) AS page CROSS JOIN leaf "
                "ON leaf.ns = ? AND leaf.bucket = page.column1 AND leaf.key = page.column2",
                (*itertools.chain.from_iterable(chunk), namespace),
            ):
                had[key] = bytes(digest)
        return had

    def _facts_text(self, facts: tuple[FactsKey, ...]) -> str:
        text = self._facts_texts.get(facts)
        if text is None:
            if len(self._facts_texts) >= _FACTS_TEXTS_MAX:
                self._facts_texts.clear()
            text = self._facts_texts[facts] = _facts_text(facts)
        return text

    # -- reading (blocking) ------------------------------------------------------------------

    def tree(self, namespace: str) -> TreeView:
        with self._lock:
            tree = self._trees.get(namespace)
            return (tree or _Namespace()).view()

    def leaves(self, namespace: str, buckets: Sequence[int]) -> list[Leaf]:
        """The key digests of the buckets, in key order within each bucket."""
        with self._lock:
            out: list[Leaf] = []
            for bucket in sorted(set(buckets)):
                for key, digest, facts in self._db.execute(
                    "SELECT key, digest, facts FROM leaf WHERE ns = ? AND bucket = ? ORDER BY key",
                    (namespace, bucket),
                ):
                    out.append(Leaf(key, bytes(digest), _facts_from_text(namespace, facts)))
            return out

    def iter_leaves(self, namespace: str) -> Iterator[Leaf]:
        for bucket in range(BUCKETS):
            yield from self.leaves(namespace, [bucket])

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self.path.unlink(missing_ok=True)
