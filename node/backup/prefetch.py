"""Work on the objects of a restore ahead of the store that takes them.

A restore's time is spent in two places that can overlap: downloading, hashing and checking
the next objects (network, hashlib and the protobuf parser, which leave the GIL or are short)
and writing the previous one into the store (SQLite leaves the GIL while it steps). Objects
are prepared by a small pool of threads, at most `ahead` of them at a time (so memory stays
bounded by a few objects), and handed over strictly in order: the replay depends on it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 2
AHEAD = 3


def prepared_in_order(
    prepare: Callable[[T], R], items: Iterable[T], *, workers: int = WORKERS, ahead: int = AHEAD
) -> Generator[tuple[T, R], None, None]:
    """Yields (item, prepare(item)) in the order of items, preparing up to `ahead` items in
    `workers` threads while the caller works on the one yielded. An exception raised by
    prepare is raised here, at that item; items after it are not waited for. Closing the
    iterator early cancels what has not started."""
    pending: deque[tuple[T, Future[R]]] = deque()
    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore-prefetch")
    try:

        def top_up() -> None:
            for item in itertools.islice(source, max(0, ahead - len(pending))):
                pending.append((item, pool.submit(prepare, item)))

        top_up()
        while pending:
            item, future = pending.popleft()
            result = future.result()
            top_up()
            yield item, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
