"""The cache's Redis: key names and the three Lua scripts (lookup, fill, invalidate), each call
one round trip under a deadline. A hit is one plain GET; a miss is the GET, the lookup script
(which leaves the fill's lease) and the fill. The rules they keep are argued in
node/cache/coherence.py.

Values: b"f" + the engine's key-state bytes (sealed values, never plaintext), b"a" for a key
never written, b"m" + a sequence number for a marker (a fill's lease).

Two clients: the lookup runs on the event loop (node/cache/resp.py), so that a hit costs the Get
no hop to a thread; the rest (fill, invalidate, delete, region claim, entry count) blocks and is
called from the node's offload threads and the invalidator thread, never from the event loop.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.retry import Retry

from node.cache.resp import LoopRedis, SentGet

FULL = b"f"
ABSENT = b"a"
MARKER = b"m"
# The most keys one invalidation script deletes (Lua's unpack has a stack limit).
INVALIDATE_KEYS_MAX = 1000

# KEYS: entry, hw. ARGV: marker ttl ms. The entry, a new marker, or "x" when hw is missing
# (no marker then: see coherence.py, point 4).
_LOOKUP = """
local v = redis.call('GET', KEYS[1])
if v then return v end
local hw = redis.call('GET', KEYS[2])
if not hw then return 'x' end
local marker = 'm' .. hw
redis.call('SET', KEYS[1], marker, 'PX', ARGV[1])
return marker
"""

# KEYS: entry. ARGV: r, value, ttl ms. 1 filled, 0 no marker (invalidated, expired or evicted),
# 2 an entry is there already, 3 the marker is newer than r (a change landed after r).
_FILL = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if string.sub(v, 1, 1) ~= 'm' then return 2 end
if tonumber(string.sub(v, 2)) > tonumber(ARGV[1]) then return 3 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: hw, entries... ARGV: seq, hw ttl ms. Deletes the entries, raises hw to seq, and returns
# the hw found before (false when there was none).
_INVALIDATE = """
local before = redis.call('GET', KEYS[1])
if (not before) or tonumber(before) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if #KEYS > 1 then redis.call('DEL', unpack(KEYS, 2)) end
return before
"""


_LOOKUP_SCRIPT = _LOOKUP.encode()


class LoopClient(Protocol):
    """The lookup's commands on the event loop, each under the deadline."""

    async def get(self, key: bytes) -> object: ...
    def send_get(self, key: bytes) -> SentGet | None: ...
    async def run_script(self, script: bytes, keys: list[bytes], args: list[bytes]) -> object: ...
    async def aclose(self) -> None: ...


class TlsLoopRedis:
    """The lookup's commands over TLS (rediss://), with redis.asyncio, which brings the TLS
    settings a URL may carry."""

    def __init__(self, url: str, *, deadline_s: float) -> None:
        self._client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=deadline_s,
            socket_connect_timeout=deadline_s,
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=False,
        )
        self._scripts: dict[bytes, AsyncScript] = {}

    async def get(self, key: bytes) -> object:
        return await self._client.get(key)

    def send_get(self, key: bytes) -> SentGet | None:
        return None  # redis.asyncio cannot write a command without awaiting its reply

    async def run_script(self, script: bytes, keys: list[bytes], args: list[bytes]) -> object:
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self._client.register_script(script)
        return await registered(keys=keys, args=args)

    async def aclose(self) -> None:
        await self._client.aclose()


class FillOutcome(enum.Enum):
    FILLED = 1
    LEASE_LOST = 0
    PRESENT = 2
    STALE = 3


class Found(NamedTuple):
    """What a lookup found: a state's bytes (hit), a key never written (hit, state None), or a
    miss that may be filled (`lease`) or not. A tuple: one is made on every hit."""

    hit: bool
    state: bytes | None = None
    lease: bool = False


def _found(value: object) -> Found | None:
    if not isinstance(value, bytes):
        return None
    tag = value[:1]
    if tag == FULL:
        return Found(hit=True, state=value[1:])
    if tag == ABSENT:
        return Found(hit=True, state=None)
    return Found(hit=False, lease=tag == MARKER)


class RedisStore:
    def __init__(self, url: str, *, node_id: str, deadline_s: float, ttl_s: float) -> None:
        # One attempt per call: a slow or absent Redis costs a read one deadline, then the
        # cache is skipped (coherence.py) rather than retried.
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=deadline_s,
            socket_connect_timeout=deadline_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=False,
        )
        # The lookups run on the event loop, under the same deadline.
        self.loop_client: LoopClient = (
            TlsLoopRedis(url, deadline_s=deadline_s)
            if url.startswith("rediss:")
            else LoopRedis(url, deadline_s=deadline_s)
        )
        self.node_id = node_id
        self.ttl_ms = max(1, int(ttl_s * 1000))
        # hw outlives the entries it guards, and is refreshed by every heartbeat.
        self.hw_ttl_ms = max(60_000, 10 * self.ttl_ms)
        self._fill = self.client.register_script(_FILL)
        self._invalidate = self.client.register_script(_INVALIDATE)
        # The entries' prefix of the last generation asked for (a generation lasts until Redis
        # fails or loses writes): built once, not on every lookup. Replaced whole, so the
        # threads that share it never see a prefix of another generation.
        self._entries_prefix = ("", b"")

    def prefix(self, generation: str) -> bytes:
        return f"domicile:{self.node_id}:{generation}:".encode()

    def entry_key(self, generation: str, namespace: str, key: str) -> bytes:
        # Namespace names have no ':'; keys may hold anything but a lone surrogate, which
        # raises UnicodeEncodeError here (the caller reads the engine, which refuses it).
        known, prefix = self._entries_prefix
        if known != generation or not prefix:
            prefix = self.prefix(generation) + b"e:"
            self._entries_prefix = (generation, prefix)
        return prefix + namespace.encode() + b":" + key.encode("utf-8")

    def hw_key(self, generation: str) -> bytes:
        return self.prefix(generation) + b"hw"

    def send_lookup(self, generation: str, namespace: str, key: str) -> SentGet | None:
        """The GET of `lookup`, written now; None when it cannot be sent without waiting."""
        return self.loop_client.send_get(self.entry_key(generation, namespace, key))

    async def lookup(self, generation: str, namespace: str, key: str, sent: SentGet | None = None) -> Found:
        """A plain GET first (a hit costs no script), the lookup script on a miss. On the
        event loop. `sent`: that GET, sent earlier by `send_lookup` for the same entry."""
        if sent is None:
            entry = self.entry_key(generation, namespace, key)
            value = await self.loop_client.get(entry)
        else:
            value = await sent.reply()
        found = _found(value) if value is not None else None
        if found is not None and found.hit:
            return found
        if sent is not None:  # the key built only for a miss's script
            entry = self.entry_key(generation, namespace, key)
        value = await self.loop_client.run_script(
            _LOOKUP_SCRIPT, [entry, self.hw_key(generation)], [str(self.ttl_ms).encode()]
        )
        found = _found(value)
        if found is None:
            raise redis.ResponseError(f"cache lookup answered {value!r:.40}")
        return found

    def fill(self, generation: str, namespace: str, key: str, r: int, state: bytes | None) -> FillOutcome:
        value = ABSENT if state is None else FULL + state
        code = self._fill(keys=[self.entry_key(generation, namespace, key)], args=[r, value, self.ttl_ms])
        return FillOutcome(int(code))

    def invalidate(self, generation: str, keys: list[tuple[str, str]], seq: int) -> int | None:
        """Deletes the keys' entries and raises hw to seq, in chunks in order; the hw found
        before the first chunk (None when there was none)."""
        hw = self.hw_key(generation)
        found: int | None = None
        chunks = [keys[i : i + INVALIDATE_KEYS_MAX] for i in range(0, len(keys), INVALIDATE_KEYS_MAX)] or [[]]
        for n, chunk in enumerate(chunks):
            entries = []
            for namespace, key in chunk:
                try:
                    entries.append(self.entry_key(generation, namespace, key))
                except UnicodeEncodeError:
                    continue  # such a key is never cached
            before = self._invalidate(keys=[hw, *entries], args=[seq, self.hw_ttl_ms])
            if n == 0:
                found = None if before is None else int(before)
        return found

    def entry_count(self) -> int:
        """Keys in the cache's Redis database (entries, markers and marks of every node and
        generation that use it)."""
        return int(self.client.dbsize())

    def delete(self, generation: str, namespace: str, key: str) -> None:
        self.client.delete(self.entry_key(generation, namespace, key))

    def region_claim(self, region: str) -> str:
        """Claims the Redis for `region` unless it is claimed already; the region it is for."""
        self.client.set(b"domicile:region", region.encode(), nx=True)
        claimed = self.client.get(b"domicile:region")
        return claimed.decode() if isinstance(claimed, bytes) else region

    async def close_loop_client(self) -> None:
        """Drops the event loop's connections; on the loop that used them."""
        await self.loop_client.aclose()

    def close(self) -> None:
        self.client.close()
