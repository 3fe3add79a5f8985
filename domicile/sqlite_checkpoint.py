"""Checkpoints of a SQLite file in WAL mode, made between its commits instead of inside them.

SQLite copies the WAL back into the database file (a checkpoint) inside the COMMIT that takes
the WAL past `wal_autocheckpoint` pages (1,000 by default). That commit then also writes back
every page changed since the last checkpoint and syncs the database file. On the engine's
single-Put commits (bench/commit_tail.py), about one commit in 180 is such a commit, and takes
5 to 10 ms where the others take 0.4 to 0.7: they make the p99.9 of durable writes, and a
synchronous cross-region Put, which waits for two commits in series (the source's, then the
far region's), meets one about once in ninety.

A WalCheckpointer makes the checkpoints on a thread and a connection of its own instead. The
writer tells it of each commit (`committed`); once `every_rows` rows changed since its last
checkpoint, it checkpoints at the first pause in the commits (`quiet_s` without one). It
checkpoints PASSIVE: it takes no lock the writer or a reader needs and copies only what no reader
still reads, so a commit that comes meanwhile goes on. It waits for a pause because a checkpoint
that overlaps commits slows them: its sync of the database file shares the disk with theirs
(measured with back-to-back commits and no wait: commit p99 0.8 ms rose to 1.3-1.4). Once a
checkpoint has copied the whole WAL, the writer's next transaction writes the WAL again from
its start: the file stays about as small as SQLite's own checkpoints keep it.

The write connection keeps SQLite's own checkpoint as the bound of the WAL: under commits that
never pause, or come faster than the thread follows, the commit that takes the WAL past
`wal_autocheckpoint` pages checkpoints as before (and copies only what the thread had not).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

from domicile import sqlite_db
from domicile.errors import InvalidArgument

log = logging.getLogger("domicile.sqlite_checkpoint")

# Rows changed between two checkpoints. A Put changes four or five (its key state, its change-log
# entry, one or two counters, its carried audit entry): a checkpoint every thirty or so commits,
# which copies a few hundred kilobytes. Well below wal_autocheckpoint's 1,000 pages, so that SQLite's own
# checkpoint is left to commits that never pause.
EVERY_ROWS_DEFAULT = 128
# SQLite counts a connection's changed rows in a C int, so the count Python reads wraps past
# 2**31 - 1 (in about half a day at 50,000 rows a second): rows since the last checkpoint are
# counted modulo 2**32.
_COUNT_WRAP = 1 << 32
# No commit for this long is a pause. Commits of requests a client makes one after another come
# a round trip apart, and a single-row commit takes about half a millisecond.
QUIET_S_DEFAULT = 0.001
# A checkpoint's outcomes, as told to on_checkpoint.
DONE = "done"
FAILED = "failed"


class WalCheckpointer:
    """Checkpoints one WAL file on a thread of its own. `conn` is a connection to the file,
    given to the checkpointer (it closes it); `committed` is called by the file's one writer
    after each commit."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        name: str,
        every_rows: int = EVERY_ROWS_DEFAULT,
        quiet_s: float = QUIET_S_DEFAULT,
    ) -> None:
        if every_rows < 1:
            raise InvalidArgument(f"every_rows is {every_rows}; it must be at least 1")
        if not 0 <= quiet_s <= 1:
            raise InvalidArgument(f"quiet_s is {quiet_s}; it must be 0 to 1 second")
        self.name = name
        self.every_rows = every_rows
        self.quiet_s = quiet_s
        # Checkpoints made and checkpoints that failed (for tests and benchmarks).
        self.checkpoints = 0
        self.failures = 0
        # Told of each checkpoint on the checkpointer's thread: its outcome (DONE or FAILED) and
        # how long it took. Settable after start: a node's metrics hear of it (node.daemon).
        self.on_checkpoint: Callable[[str, float], None] | None = None
        self._conn = conn
        # The file's path, as SQLite opened it (its WAL is this plus "-wal").
        self.path: str = conn.execute("PRAGMA database_list").fetchone()[2]
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._changes_at_last = 0
        self._last_commit = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @classmethod
    def beside(cls, path: str | os.PathLike[str], pragmas: sqlite_db.Pragmas) -> WalCheckpointer:
        """The checkpointer of the file at `path`, on a connection of its own with the pragmas
        of the file's other connections, its thread named after the file."""
        conn = sqlite_db.connect(path, pragmas, label=os.fspath(path))
        return cls(conn, name=f"checkpoint {os.path.basename(path)}")

    def committed(self, total_changes: int) -> bool:
        """After a commit, with the write connection's total_changes: makes a checkpoint due
        once every_rows rows changed since the last one was, and says whether it did. Called by
        one thread at a time."""
        self._last_commit = time.monotonic()
        if (total_changes - self._changes_at_last) % _COUNT_WRAP < self.every_rows:
            return False
        self._changes_at_last = total_changes
        self._due.set()
        return True

    def wal_bytes(self) -> int:
        """The size of the file's WAL: 0 without one, or when it cannot be read (a gauge must not
        fail over it; the writer's own use of the file fails loudly). Blocks."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def close(self) -> None:
        """Stops the thread, after the checkpoint it makes if any, and closes its connection.
        Call before the write connection is closed, so that the writer closes last and SQLite
        checkpoints and removes the WAL then."""
        self._stopping.set()
        self._due.set()
        self._thread.join()

    def _tell(self, outcome: str, seconds: float) -> None:
        hook = self.on_checkpoint
        if hook is None:
            return
        try:
            hook(outcome, seconds)
        except Exception:
            # A metrics hook must not stop the checkpoints.
            log.exception("%s: the checkpoint hook failed", self.name)

    def _run(self) -> None:
        try:
            while True:
                self._due.wait()
                self._due.clear()
                while not self._stopping.is_set():
                    pause = self._last_commit + self.quiet_s - time.monotonic()
                    if pause <= 0:
                        break
                    self._stopping.wait(pause)
                if self._stopping.is_set():
                    return
                started = time.perf_counter()
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                    outcome = DONE
                except sqlite3.Error as error:
                    # The next commits make one due again; meanwhile SQLite's own checkpoint
                    # bounds the WAL, so nothing is lost but time.
                    self.failures += 1
                    outcome = FAILED
                    log.warning("%s: a checkpoint failed: %s", self.name, error)
                self._tell(outcome, time.perf_counter() - started)
        finally:
            self._conn.close()
