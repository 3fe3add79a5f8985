"""Garbage-collector settings of a serving node process.

Nearly every object a write makes (its command, version, mutation, audit entry, result) is freed
by reference counting as soon as the write is answered; the cyclic collector finds nothing in
them, yet with CPython's default thresholds (a young collection every 700 net allocations) it
runs every few records of a batch, and its full collections rescan the whole process, start-up
state included. Measured on a node under PutBatch load: 13-16% of the node's CPU in the
collector, full collections of up to 100 ms. So once a node has started:

- what start-up built (modules, configuration, policy, the open stores) is frozen out of the
  collector's generations (gc.freeze): it lives as long as the process and is never rescanned;
- the young generation is collected after YOUNG_OBJECTS net allocations instead of 700: in
  the same measurement the collector's share fell to about 4%, and its longest pause (about
  40 ms) was no longer than with the default threshold once start-up is frozen. A larger
  threshold costs less CPU still, but each young collection scans what is alive and young
  (mostly the writes in flight), so its pauses grow with it, and single Puts feel them at p99.

Only the node's entry point calls this: tests that start nodes inside the test process keep
the interpreter's defaults.
"""

from __future__ import annotations

import gc

YOUNG_OBJECTS = 10_000
# Young collections per middle one, and middle ones per full one (CPython's defaults: 10, 10).
MIDDLE_EVERY = 10
FULL_EVERY = 10


def tune_for_serving() -> None:
    """Call once, after start-up: collects what start-up left, freezes the rest, raises the
    young-generation threshold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, MIDDLE_EVERY, FULL_EVERY)
