"""Blocking work that async code needs (store reads, data-key unwraps, sealing and opening
values, key and data files) runs here, in a small pool of threads of its own, never on the event
loop: one slow read or a large value to decrypt would otherwise stall every call in the process.

A pool of its own rather than asyncio's default executor, because:
- the store keeps one read connection per thread (node.engine.sqlite), so a bounded pool bounds
  the read connections, and no connection is ever used by two threads at once;
- the daemon drains the pool before it closes the store and the key ring, so no read is still
  running on a connection that is being closed;
- the long jobs that use the default executor (compliance scans, audit verification) cannot
  queue ahead of a Get.

Each hop costs a thread hand-off and a loop wake-up (about 50-100 us), so callers make one hop
per request and do all of a request's blocking work in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# SQLite reads and AES-GCM release the GIL, so a few threads keep two cores busy; more would
# only add read connections.
THREADS_DEFAULT = 4


class Offload:
    """Runs blocking callables off the event loop. Without `threads` it uses asyncio's default
    executor (components built on their own, as in tests)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="domicile-offload") if threads else None

    async def warm(self, prepare: Callable[[], object]) -> None:
        """Starts every thread now and runs `prepare` once on each (the store opens a thread's
        read connection on its first read), so that no request waits for a thread to start or
        a connection to open."""
        if not self.threads:
            return
        # Each job holds its thread until all have started, so every thread takes one.
        started = threading.Barrier(self.threads)

        def prepare_this_thread() -> None:
            try:
                prepare()
            except BaseException:
                # The others stop waiting at once: a failed start must not hold threads for the
                # barrier's timeout, nor leave them behind when the daemon tears down.
                started.abort()
                raise
            with contextlib.suppress(threading.BrokenBarrierError):
                started.wait(timeout=10.0)

        # Every job ends before warm returns or raises (the first failure, not a broken barrier).
        results = await asyncio.gather(
            *(self.run(prepare_this_thread) for _ in range(self.threads)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Waits for the work already started, then ends the threads (each thread's read
        connection closes with it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
