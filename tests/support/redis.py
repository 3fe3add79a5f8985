"""A real redis-server for a test, on a free port, stopped afterwards; and ways to make it slow
(SIGSTOP: it takes connections but answers nothing) or gone."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from domicile.redis_server import RedisServer


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """The server stops answering (as if overloaded or behind a stalled network) while inside."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
