"""The regional read-through cache of sealed key states, in the node's region's Redis.

The cache holds what the engine stores (key states with sealed values), so every read still
opens values with the region's keys (an erased subject's values stay unreadable), and the read
policy and redaction still run on every read. It sits beside the engine, not in it:

- `lookup(namespace, key)` runs on the event loop: a hit answers from Redis there, with no
  hop to a thread; otherwise it hands back the rest of the read (`Pending.read(load)`) for an
  offload thread, where `load()` (the engine read) answers and, when the lookup left a lease,
  fills the entry.
- `changed(keys)` runs on the writer thread after a local commit or a replicated apply is
  durable and before it is acknowledged; an invalidator thread then deletes the entries in
  Redis, in order, and sends a heartbeat every `heartbeat_s`.

Why that is coherent is argued in node/cache/coherence.py. Over a store other nodes write too
(`shared_store`), their changes reach `others` (node/cache/others.py) from the store's change
stream and are published like this node's own; reads use the cache only while that news is
recent enough. A Redis that is down, slow (each
call has a deadline) or answers nonsense never fails a read: the read falls back to the engine
and the failure is counted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import redis
from google.protobuf.message import DecodeError

from domicile.causality import KeyState
from domicile.errors import DataCorruption, DomicileError
from domicile.memo import remember
from domicile.wire.records import key_state_from_bytes, key_state_to_bytes
from node.cache.coherence import Coherence, Key, Ticket
from node.cache.others import OtherWriters
from node.cache.resp import SentGet
from node.cache.store import FillOutcome, RedisStore

log = logging.getLogger("domicile.cache")

# Entries larger than this are decoded (protobuf, a sha256 of each value) on an offload thread,
# not on the event loop, where they would hold up every other call.
LOOP_DECODE_BYTES_MAX = 64 * 1024

# States decoded on the loop that are kept for the next hit of the same bytes (at most about
# 4 MiB of entries, with their states).
DECODED_ENTRIES_MAX = 1024
DECODED_ENTRY_BYTES_MAX = 4096

# Failures of a call: Redis errors (refused, reset, timed out, script errors) and an answer
# that is not what the scripts return.
_FAILURES = (redis.RedisError, OSError, ValueError)


@dataclass(frozen=True)
class CacheSettings:
    url: str
    region: str
    ttl_s: float = 300.0
    deadline_s: float = 0.05
    heartbeat_s: float = 1.0
    entry_bytes_max: int = 1 << 20
    # Over a shared store: how old the last confirmation that every change of the other nodes
    # has come through may be for reads to use the cache (the staleness bound, others.py).
    others_lag_max_s: float = 0.5


class CacheCounters(Protocol):
    """What the cache counts (node/metrics.py CacheMetrics puts it on Prometheus)."""

    def hit(self) -> None: ...
    def miss(self) -> None: ...
    def fill_refused(self, reason: str) -> None: ...
    def fallback(self, reason: str) -> None: ...
    def entries(self, count: int) -> None: ...
    def reset(self, reason: str) -> None: ...


class NoCounters:
    def hit(self) -> None:
        pass

    def miss(self) -> None:
        pass

    def fill_refused(self, reason: str) -> None:
        pass

    def fallback(self, reason: str) -> None:
        pass

    def entries(self, count: int) -> None:
        pass

    def reset(self, reason: str) -> None:
        pass


class Hit(NamedTuple):
    """A state the cache answered (None: the key was never written). `entry`: the entry's bytes
    the state was decoded from, when it was decoded on the event loop (the same bytes are the
    same state). A tuple: one is made on every hit."""

    state: KeyState | None
    entry: bytes | None = None


class Pending:
    """A read the cache did not answer on the event loop. `read(load)` finishes it on an
    offload thread (it blocks): the engine read, and the fill when the lookup left a lease; or
    the decoding of an entry too large to decode on the loop; or the drop of a damaged entry."""

    __slots__ = ("_cache", "_damaged", "_entry", "_lease")

    def __init__(
        self,
        cache: ReadCache,
        lease: tuple[str, str, str] | None = None,
        *,
        entry: tuple[str, str, str, bytes] | None = None,
        damaged: tuple[str, str, str] | None = None,
    ) -> None:
        self._cache = cache
        self._lease = lease  # generation, namespace, key
        self._entry = entry  # generation, namespace, key, state bytes
        self._damaged = damaged  # generation, namespace, key

    def read(self, load: Callable[[], KeyState | None]) -> KeyState | None:
        cache = self._cache
        if self._damaged is not None:
            cache._drop(*self._damaged)
            return load()
        if self._entry is not None:
            generation, namespace, key, blob = self._entry
            state = cache._decode(namespace, key, blob)
            if isinstance(state, Exception):
                cache._drop(generation, namespace, key)
                return load()
            if cache.coherence.still_valid(Ticket(generation), (namespace, key)):
                cache.counters.hit()
                return state
            cache.counters.miss()
            return load()
        if self._lease is None:
            return load()
        r = cache.coherence.seq  # before the engine read: what it reads contains every change up to r
        state = load()
        cache._fill(*self._lease, r, state)
        return state


class ReadAhead:
    """A lookup's GET sent ahead (`ReadCache.read_ahead`), with the ticket taken just before it.
    Either `ReadCache.lookup` takes its reply, or `drop` gives it up: nothing is counted for a
    read-ahead that is dropped, and its reply is never seen."""

    __slots__ = ("key", "sent", "ticket")

    def __init__(self, key: Key, ticket: Ticket, sent: SentGet) -> None:
        self.key = key
        self.ticket = ticket
        self.sent = sent

    def drop(self) -> None:
        self.sent.drop()


class ReadCache:
    def __init__(
        self,
        settings: CacheSettings,
        *,
        node_id: str,
        counters: CacheCounters | None = None,
        store: RedisStore | None = None,
        shared_store: bool = False,
    ) -> None:
        self.settings = settings
        self.counters: CacheCounters = counters or NoCounters()
        self.store = store or RedisStore(
            settings.url, node_id=node_id, deadline_s=settings.deadline_s, ttl_s=settings.ttl_s
        )
        self.coherence = Coherence()
        # Other nodes write the same store: their changes come through here.
        self.others = (
            OtherWriters(self.coherence.changed, self._others_lost, lag_max_s=settings.others_lag_max_s)
            if shared_store
            else None
        )
        # Entry bytes -> their state, decoded and checked; only on the event loop.
        self._decoded: dict[bytes, KeyState] = {}
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def check_region(self) -> str:
        """The region this Redis serves (claimed for ours when unclaimed). Blocks."""
        return self.store.region_claim(self.settings.region)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._invalidate_loop, name="domicile-cache", daemon=True)
        self._thread.start()

    async def close_loop_client(self) -> None:
        """Drops the lookups' connections; on the event loop that used them, before `close`."""
        await self.store.close_loop_client()

    def close(self) -> None:
        """Stops the invalidator after a last round, then drops the connections. Blocks."""
        self._stopped.set()
        self.coherence.wake()
        if self._thread is not None:
            self._thread.join(5.0)
        self.store.close()

    # -- the writer thread ----------------------------------------------------------------------

    def changing(self, keys: Iterable[Key]) -> None:
        try:
            self.coherence.changing(keys)
        except BaseException:
            self.coherence.abandon()
            raise

    def settled(self, keys: Iterable[Key]) -> None:
        # Nothing to give up if this fails: the keys stay marked, and reads of them use the store.
        self.coherence.settled(keys)

    def changed(self, keys: Iterable[Key]) -> None:
        try:
            self.coherence.changed(keys)
        except BaseException:
            # Whatever went wrong, these keys may now be stale in Redis: give up the generation.
            self.coherence.abandon()
            raise

    def _others_lost(self) -> None:
        self.coherence.abandon()
        self.counters.reset("others_lost")

    # -- reads ----------------------------------------------------------------------------------

    def read_ahead(self, namespace: str, key: str) -> ReadAhead | None:
        """On the event loop, before the read is authorized: sends the lookup's GET now so that
        its round trip overlaps the call's own work, and returns without waiting. Counts nothing
        and never raises; None when the lookup would not ask Redis (or cannot send at once).

        Coherent like `lookup`: the ticket is taken before the GET is sent and `still_valid` is
        checked after its reply, so the sequence ticket, GET, check is the same; only more of the
        read happens in between, and a change acknowledged in between was acknowledged after
        this read began."""
        coherence = self.coherence
        if not coherence.usable:
            return None
        others = self.others
        if others is not None and not others.trusted():
            return None
        k = (namespace, key)
        ticket = coherence.ticket(k)
        if ticket is None:
            return None
        try:
            sent = self.store.send_lookup(ticket.generation, namespace, key)
        except UnicodeEncodeError:
            return None
        return None if sent is None else ReadAhead(k, ticket, sent)

    async def lookup(self, namespace: str, key: str, ahead: ReadAhead | None = None) -> Hit | Pending:
        """On the event loop: the key's state when Redis has it (a hit needs no thread), or the
        rest of the read for an offload thread (`Pending.read`). Counts hits, misses and
        fallbacks; a failure of Redis is never raised. `ahead`: this key's GET, sent by
        `read_ahead` (it is used or dropped here)."""
        coherence = self.coherence
        k = (namespace, key)
        if ahead is not None and (ahead.key != k or ahead.ticket.generation != coherence.generation):
            ahead.drop()  # another key's, or a generation given up since
            ahead = None
        if not coherence.usable:
            if ahead is not None:
                ahead.drop()
            self.counters.fallback("unavailable")
            return Pending(self)
        if ahead is not None:
            # Its checks were made when it was sent, at the start of this read: the other
            # writers' news was recent enough then (the bound is counted from a read's start,
            # others.py), and the ticket, taken then, is checked after the reply (a change of
            # the key since then makes still_valid refuse the entry).
            ticket = ahead.ticket
        else:
            others = self.others
            if others is not None and not others.trusted():
                self.counters.fallback("others_behind")
                return Pending(self)
            found_ticket = coherence.ticket(k)
            if found_ticket is None:  # a change of the key has not reached Redis yet
                self.counters.miss()
                return Pending(self)
            ticket = found_ticket
        try:
            found = await self.store.lookup(
                ticket.generation, namespace, key, None if ahead is None else ahead.sent
            )
        except UnicodeEncodeError:
            return Pending(self)  # not a key the engine takes either; it says why
        except _FAILURES as exc:
            self._failed("lookup", exc)
            return Pending(self)
        if not found.hit:
            self.counters.miss()
            return Pending(self, (ticket.generation, namespace, key) if found.lease else None)
        if found.state is not None and len(found.state) > LOOP_DECODE_BYTES_MAX:
            return Pending(self, entry=(ticket.generation, namespace, key, found.state))
        state = self._decode_on_loop(namespace, key, found.state)
        if isinstance(state, Exception):
            return Pending(self, damaged=(ticket.generation, namespace, key))
        if not coherence.still_valid(ticket, k):
            self.counters.miss()
            return Pending(self)
        self.counters.hit()
        return Hit(state, found.state)

    def _decode_on_loop(self, namespace: str, key: str, blob: bytes | None) -> KeyState | Exception | None:
        """`_decode`, remembering the last few states decoded: a key read again and again is
        answered from the same bytes each time, and decoding them (protobuf, a sha256 of each
        value) is most of a hit's own work. Keyed by the entry's bytes: the same bytes are the
        same state, so the ticket and still_valid decide as before whether it may be served."""
        if blob is None or len(blob) > DECODED_ENTRY_BYTES_MAX:
            return self._decode(namespace, key, blob)
        memo = self._decoded
        state = memo.get(blob)
        if state is not None:
            return state
        decoded = self._decode(namespace, key, blob)
        if isinstance(decoded, KeyState):
            remember(memo, blob, decoded, DECODED_ENTRIES_MAX)
        return decoded

    def _decode(self, namespace: str, key: str, blob: bytes | None) -> KeyState | Exception | None:
        """The state of an entry, or why it cannot be used (counted as a fallback)."""
        if blob is None:
            return None
        try:
            state = key_state_from_bytes(blob)
            for v in state.versions:
                if not v.checksum_ok():
                    raise DataCorruption(f"cached value of {namespace}/{key} failed its sha256 checksum")
        except (DecodeError, DomicileError) as exc:
            # Damaged in the cache, not in the store: the entry is dropped and the store read.
            log.warning("cache entry %s/%s cannot be used (%s); reading the store", namespace, key, exc)
            self.counters.fallback("corrupt")
            return exc
        return state

    def _drop(self, generation: str, namespace: str, key: str) -> None:
        try:
            self.store.delete(generation, namespace, key)
        except _FAILURES as failure:
            self._failed("delete", failure, read_fell_back=False)

    def _fill(self, generation: str, namespace: str, key: str, r: int, state: KeyState | None) -> None:
        blob = None if state is None else key_state_to_bytes(state)
        if blob is not None and len(blob) > self.settings.entry_bytes_max:
            return
        try:
            outcome = self.store.fill(generation, namespace, key, r, blob)
        except _FAILURES as exc:
            # The read itself was answered by the store already.
            self._failed("fill", exc, read_fell_back=False)
            return
        if outcome is FillOutcome.STALE:
            self.counters.fill_refused("stale")
        elif outcome is FillOutcome.LEASE_LOST:
            self.counters.fill_refused("lease_lost")
        elif outcome is FillOutcome.PRESENT:
            self.counters.fill_refused("present")

    def _failed(self, what: str, exc: BaseException, *, read_fell_back: bool = True) -> None:
        if read_fell_back:
            reason = "timeout" if isinstance(exc, (redis.TimeoutError, TimeoutError)) else "error"
            self.counters.fallback(reason)
        if self.coherence.usable:
            log.warning(
                "cache %s failed (%s: %s); reading the store until Redis answers",
                what,
                type(exc).__name__,
                exc,
            )
        self.coherence.distrust()

    # -- the invalidator thread -----------------------------------------------------------------

    def _invalidate_loop(self) -> None:
        coherence = self.coherence
        last_count = 0.0
        down = False
        while True:
            stopping = self._stopped.is_set()
            batch = coherence.take(0 if stopping else self.settings.heartbeat_s)
            try:
                hw_before = self.store.invalidate(batch.generation, batch.keys, batch.seq)
            except _FAILURES as exc:
                if coherence.failed(batch):
                    self.counters.reset("invalidation_failed")
                if not down:
                    down = True
                    log.warning(
                        "cache invalidation failed (%s: %s); reads use the store, new generation",
                        type(exc).__name__,
                        exc,
                    )
                if stopping:
                    return
                self._stopped.wait(self.settings.heartbeat_s)
                continue
            if down:
                down = False
                log.info("the cache's Redis answers again; reads use the cache")
            if not coherence.landed(batch, hw_before):
                self.counters.reset("redis_lost_writes")
                log.warning(
                    "the cache's Redis lost entries this node wrote (restart or flush); new generation"
                )
            if stopping:
                return
            now = time.monotonic()
            if now - last_count >= self.settings.heartbeat_s:
                last_count = now
                with contextlib.suppress(*_FAILURES):
                    self.counters.entries(self.store.entry_count())
