"""The node process's runtime: which event loop runs it.

uvloop, when installed (a dependency on Linux and macOS), runs the loop: the loop's own work is
a large share of what each call costs, and uvloop does it in C (a bare grpc.aio echo server
spends about a quarter less CPU per call on it). `DOMICILE_EVENT_LOOP=asyncio` runs the standard
loop instead.

The garbage collector's settings for a serving node are in `node.gc_tuning`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOP_ENV = "DOMICILE_EVENT_LOOP"


def event_loop_name() -> str:
    """ "uvloop" when it is installed and not turned off by DOMICILE_EVENT_LOOP=asyncio."""
    choice = os.environ.get(EVENT_LOOP_ENV, "").strip().lower()
    if choice not in ("", "uvloop", "asyncio"):
        raise SystemExit(f"{EVENT_LOOP_ENV}={choice!r}: use uvloop or asyncio (or leave it unset)")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs `main` to completion on the chosen event loop."""
    if event_loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
