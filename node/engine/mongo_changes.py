"""The key-state changes other nodes of the region commit to the shared MongoDB database, as they
happen: what a node's read cache needs to stay coherent when it is not the only writer.

A thread follows a change stream on the region's database (key_states and change_marks):

- Every change of a key state whose `by` stamp is not this process's (another daemon's local
  write or replicated apply, a restore, anything else that touched the document) is handed to
  the listener's `changed` as the key it touched, in commit order. Own changes are left out: the
  group committer already reported them before they were acknowledged.
- Confirmations say how far behind the stream is. A wait for the next change that the server
  answers with nothing new was asked after the moment T the thread noted before asking: every
  change committed before T has come through (the stream is one ordered log), and the listener
  hears `confirmed(T)`. A stream that always has something new (a steady write load) is never
  empty; then, once `fence_interval_s` has passed without a confirmation, the thread writes a
  fence (a new stamp in its own change_marks document), noting when it started the write; when
  the stream brings the fence back, every change another node acknowledged before it started
  has come through first.
- The stream's resume token survives a connection that breaks: when the database answers again,
  the stream resumes after the last change it delivered, so nothing is missed (`unreachable`
  meanwhile). A stream that cannot resume (its history is gone, the collection was dropped) is
  `lost`: what happened in between is unknown.

Blocking: runs on a thread of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from node.engine.mongo import MongoBackend

log = logging.getLogger("domicile.engine.mongo_changes")

# A fence is written only when this long has passed without a confirmation (a busy stream).
FENCE_INTERVAL_S = 0.2
# How long one wait for the next change lasts on the server, as a share of the staleness bound
# the confirmations serve (node/cache/others.py, lag_max_s). Each answer costs this process about
# half a millisecond of Python under the GIL (the driver's getMore) and the database a query; at
# 50 ms, twenty a second, the Gets that met one were slowed by it and by the thread switches
# around it, enough of them to set the p99 of a cache hit. A confirmation is dated when its
# wait was asked, so it is up to two waits old when the next one lands: a quarter of the bound
# (0.125 s for 0.5 s) leaves half of it for a slow answer before reads stop using the cache,
# and stays under the fence interval, so an idle stream writes no fences.
AWAIT_SHARE_OF_BOUND = 0.25
AWAIT_S_MIN = 0.01
AWAIT_S_MAX = 1.0
RETRY_S = 0.5


def await_for_bound(lag_max_s: float) -> float:
    """The server-side wait of one request of the stream for a staleness bound (seconds)."""
    return min(AWAIT_S_MAX, max(AWAIT_S_MIN, lag_max_s * AWAIT_SHARE_OF_BOUND))


_WATCHED = ("key_states", "change_marks")
_PIPELINE: list[Mapping[str, Any]] = [
    {"$match": {"ns.coll": {"$in": list(_WATCHED)}}},
    {
        "$project": {
            "operationType": 1,
            "ns": 1,
            "documentKey": 1,
            "inserted_by": "$fullDocument.by",
            "updated_by": "$updateDescription.updatedFields.by",
        }
    },
]


class ChangeListener(Protocol):
    """What hears of the other nodes' changes (node/cache/others.py)."""

    def changed(self, keys: list[tuple[str, str]]) -> None: ...

    def confirmed(self, started_at: float) -> None:
        """Every change another node acknowledged before this monotonic time has been handed
        to `changed`."""
        ...

    def unreachable(self, since: float) -> None:
        """The database did not answer a call started at this monotonic time; the stream
        resumes where it was when it does."""
        ...

    def reconnected(self) -> None: ...

    def lost(self) -> None:
        """Changes may have been missed: what was learned from the stream is no longer enough."""
        ...


class RegionChanges:
    def __init__(
        self,
        backend: MongoBackend,
        listener: ChangeListener,
        *,
        await_s: float,
        fence_interval_s: float = FENCE_INTERVAL_S,
    ) -> None:
        self.backend = backend
        self.listener = listener
        self.await_ms = max(1, round(await_s * 1000))
        self.fence_interval_s = fence_interval_s
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.events = 0
        # Answers of the server with nothing new (each one a confirmation).
        self.empty_answers = 0
        # When the call now in progress started (what an outage is dated from).
        self._call_started = 0.0
        # Where the stream resumes after a broken connection: the token of the last answer it
        # handled, kept here (not returned by _follow, which leaves only by raising while the
        # thread runs) so that the changes other nodes commit while this one cannot reach the
        # database are delivered when it can again. None: from now (at the start, and after
        # the stream was lost, when the listener abandons what it knew).
        self._token: Mapping[str, Any] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="domicile-region-changes", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        down = False
        while not self._stopped.is_set():
            try:
                self._follow()
            except ConnectionFailure as error:
                # Includes a server that cannot be selected: the database is unreachable. The
                # token stays: the next attempt resumes after the last change handled.
                if not down:
                    down = True
                    log.warning("region changes: %s does not answer (%s)", self.backend.label, error)
                self.listener.unreachable(self._call_started)
            except (OperationFailure, PyMongoError) as error:
                # The stream cannot resume (history gone, invalidated) or failed otherwise.
                log.warning("region changes: the change stream ended (%s); starting over", error)
                self._token = None
                self.listener.lost()
            else:
                continue
            self._stopped.wait(RETRY_S)
        log.debug("region changes stopped")

    def _follow(self) -> None:
        """Follows the stream from the kept token (None: from now) until stopped, keeping the
        token of every answer handled. Raises what the driver raises."""
        b = self.backend
        self._call_started = time.monotonic()
        with b.db.watch(_PIPELINE, resume_after=self._token, max_await_time_ms=self.await_ms) as stream:
            self._token = stream.resume_token
            self.listener.reconnected()
            fence: tuple[str, float] | None = None
            next_fence = time.monotonic() + self.fence_interval_s
            while not self._stopped.is_set():
                if not stream.alive:
                    raise OperationFailure("the change stream was closed by the server")
                now = self._call_started = time.monotonic()
                if fence is None and now >= next_fence:
                    stamp = b.next_stamp()
                    b.marks.update_one({"_id": b.node_id}, {"$set": {"by": stamp}}, upsert=True)
                    fence = (stamp, now)
                cursor = stream._cursor  # a resume replaces it (see below)
                event = stream.try_next()
                # Nothing below can fail on the connection: the event is handled before the
                # next call, so a resume from this token misses nothing and repeats nothing.
                self._token = stream.resume_token
                if event is None:
                    # Nothing new in an answer to a request sent after `now` (on the same
                    # cursor: after a resume the driver may answer from the new cursor's first
                    # batch without asking again, which proves nothing).
                    if stream._cursor is cursor:
                        self.empty_answers += 1
                        self.listener.confirmed(now)
                        next_fence = now + self.fence_interval_s
                    continue
                self.events += 1
                by = event.get("inserted_by") or event.get("updated_by")
                coll = event.get("ns", {}).get("coll")
                if coll == "change_marks":
                    if fence is not None and by == fence[0]:
                        self.listener.confirmed(fence[1])
                        fence = None
                        next_fence = now + self.fence_interval_s
                    continue
                if isinstance(by, str) and by.rsplit("/", 1)[0] == b.stamp_origin:
                    continue  # this process's own change: reported by the committer already
                key = _key_of(event)
                if key is not None:
                    self.listener.changed([key])
                elif event.get("operationType") in ("drop", "dropDatabase", "rename", "invalidate"):
                    raise OperationFailure(f"the change stream saw {event.get('operationType')}")


def _key_of(event: Mapping[str, Any]) -> tuple[str, str] | None:
    doc_id = event.get("documentKey", {}).get("_id")
    if not isinstance(doc_id, str) or "/" not in doc_id:
        return None
    namespace, key = doc_id.split("/", 1)  # a namespace holds no '/'
    return namespace, key
