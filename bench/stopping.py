"""How the benchmark's helper servers (echo, TCP echo, delay proxy, floors) stop: the run sends
them SIGTERM (bench.procs), and Ctrl-C reaches them as SIGINT."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals() -> asyncio.Event:
    """An event set when the process gets SIGINT or SIGTERM. Call on the running loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
