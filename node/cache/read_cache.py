"""The regional read-through cache of sealed key states, in the node's region's Redis.

The cache holds what the engine stores (key states with sealed values), so every read still
opens values with the region's keys (an erased subject's values stay unreadable), and the read
policy and redaction still run on every read. It sits beside the engine, not in it:

- `read(namespace, key, load)` runs on an offload thread: a hit answers from Redis; otherwise
  `load()` (the engine read) answers and, when the lookup left a lease, fills the entry.
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
from typing import Protocol

import redis
from google.protobuf.message import DecodeError

from domicile.causality import KeyState
from domicile.errors import DataCorruption, DomicileError
from domicile.wire.records import key_state_from_bytes, key_state_to_bytes
from node.cache.coherence import Coherence, Key
from node.cache.others import OtherWriters
from node.cache.store import FillOutcome, RedisStore

log = logging.getLogger("domicile.cache")

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
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def check_region(self) -> str:
        """The region this Redis serves (claimed for ours when unclaimed). Blocks."""
        return self.store.region_claim(self.settings.region)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._invalidate_loop, name="domicile-cache", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops the invalidator after a last round, then drops the connections. Blocks."""
        self._stopped.set()
        self.coherence.wake()
        if self._thread is not None:
            self._thread.join(5.0)
        self.store.close()

    # -- the writer thread ----------------------------------------------------------------------

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

    # -- reads (offload threads) ----------------------------------------------------------------

    def read(self, namespace: str, key: str, load: Callable[[], KeyState | None]) -> KeyState | None:
        """The key's state, from the cache when it has it, else from load()."""
        coherence = self.coherence
        if not coherence.usable:
            self.counters.fallback("unavailable")
            return load()
        others = self.others
        if others is not None and not others.trusted():
            self.counters.fallback("others_behind")
            return load()
        k = (namespace, key)
        ticket = coherence.ticket(k)
        if ticket is None:  # a change of the key has not reached Redis yet
            self.counters.miss()
            return load()
        try:
            found = self.store.lookup(ticket.generation, namespace, key)
        except UnicodeEncodeError:
            return load()  # not a key the engine takes either; it says why
        except _FAILURES as exc:
            self._failed("lookup", exc)
            return load()
        if found.hit:
            state = self._decode(ticket.generation, namespace, key, found.state)
            if not isinstance(state, Exception) and coherence.still_valid(ticket, k):
                self.counters.hit()
                return state
        self.counters.miss()
        r = coherence.seq  # before the engine read: what it reads contains every change up to r
        state = load()
        if found.lease:
            self._fill(ticket.generation, namespace, key, r, state)
        return state

    def _decode(
        self, generation: str, namespace: str, key: str, blob: bytes | None
    ) -> KeyState | Exception | None:
        if blob is None:
            return None
        try:
            state = key_state_from_bytes(blob)
            for v in state.versions:
                if not v.checksum_ok():
                    raise DataCorruption(f"cached value of {namespace}/{key} failed its sha256 checksum")
        except (DecodeError, DomicileError) as exc:
            # Damaged in the cache, not in the store: drop the entry and read the store.
            log.warning("cache entry %s/%s cannot be used (%s); reading the store", namespace, key, exc)
            self.counters.fallback("corrupt")
            try:
                self.store.delete(generation, namespace, key)
            except _FAILURES as failure:
                self._failed("delete", failure, read_fell_back=False)
            return exc
        return state

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
