"""The HLC ceiling of a node: the highest physical time (ms) its clock may issue before it must
store a higher one. A node restarts above it, so its clock never goes backwards, even when the
wall clock was set back while it was down (domicile.hlc.HybridClock.persist).

It is a small file in the node's data directory rather than a row of the store: the clock is
read from any thread, including the writer thread in the middle of a store transaction, and a
store write from there would wait on itself. The file is replaced atomically and fsynced, once
per reserve step at most."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from domicile.errors import DataCorruption
from domicile.identity.files import PRIVATE_MODE, write_atomically

log = logging.getLogger("domicile.node.clock")

CEILING_FILE = "hlc.ceiling"
# How far ahead of the timestamp that needed it a reservation reaches. A restart resumes at most
# this far ahead of the old wall time, so it stays well below the replication drift bound
# (max_clock_drift_ms, 5 s by default) that peers hold a node's timestamps to.
RESERVE_STEP_MS = 1000


def load_ceiling(data_dir: Path) -> int:
    """The stored ceiling in milliseconds; 0 when none was stored yet."""
    path = data_dir / CEILING_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    if not text.isdigit():
        raise DataCorruption(
            f"{path} holds {text[:40]!r}, not a time in milliseconds; restore it or remove it only if "
            "this node's wall clock is known to be past every timestamp it issued"
        )
    return int(text)


def save_ceiling(data_dir: Path, ceiling_ms: int) -> None:
    write_atomically(data_dir / CEILING_FILE, f"{ceiling_ms}\n".encode("ascii"), PRIVATE_MODE, overwrite=True)


class CeilingStorer:
    """Runs the clock's early reservations (HybridClock.persist(early=...)) one after another on
    a thread of its own, started once. The reservation is started from inside the clock, by
    whichever timestamp comes near the ceiling: on the event loop that is a write's audit entry
    or a replicated apply. Starting a new thread there, once a reserve step, held the loop until
    the thread had started (threading.Thread.start waits for it), 0.1 ms on a quiet machine and
    milliseconds on a busy one; handing the work to this thread is a queue put."""

    def __init__(self, name: str = "hlc-ceiling") -> None:
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def run(self, store: Callable[[], None]) -> None:
        """Queues `store`; never blocks (it is called with the clock's lock held)."""
        self._work.put(store)

    def close(self) -> None:
        """Lets the thread end once what is queued has run."""
        self._work.put(None)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def _run(self) -> None:
        while True:
            store = self._work.get()
            if store is None:
                return
            try:
                store()
            except Exception:
                # HybridClock._reserve_early handles its own failures; anything else must not end
                # the thread, or no later reservation would run early.
                log.exception("an early HLC ceiling reservation failed")
