"""A read through the cache as the node's Get makes it: the lookup on the event loop, the rest of
a read the cache did not answer (the engine read, the fill) on a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from domicile.causality import KeyState
from node.cache.read_cache import Hit, ReadCache


async def read_through(
    cache: ReadCache, namespace: str, key: str, load: Callable[[], KeyState | None]
) -> KeyState | None:
    found = await cache.lookup(namespace, key)
    if isinstance(found, Hit):
        return found.state
    return await asyncio.to_thread(found.read, load)
