"""A redis-server run as a child process: the regional cache of a node on one machine (tests,
benchmarks, a local cluster).

The server keeps nothing on disk (no RDB snapshot, no append-only file): a cache that came back
from a snapshot after a restart would hold entries invalidated after the snapshot was taken.
It evicts only keys with a time to live, least recently used first (`volatile-lru`), which is
what the node's cache expects (node/cache/). It listens on loopback only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from domicile.errors import FailedPrecondition, Unavailable
from domicile.ports import free_port

INSTALL_HINT = "install it with `apt-get install redis-server` (Debian package redis-server)"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def redis_server_binary() -> str:
    """The path of redis-server, or FailedPrecondition saying how to install it."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise FailedPrecondition(f"redis-server is not installed; {INSTALL_HINT}")
    return found


def _ping(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server child. start() picks a free port (unless given one) and waits until the
    server answers PING; stop() ends it (SIGTERM, then SIGKILL). Usable as a context manager."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        maxmemory: str = "256mb",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.directory = Path(directory)
        self.host = host
        self.port = port
        self.maxmemory = maxmemory
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis-server.log"

    def command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "volatile-lru",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        if self.process is not None:
            raise FailedPrecondition("this redis-server was already started; create a new one")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ping(self.host, self.port, 0.2):
            code = self.process.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                raise Unavailable(
                    f"redis-server on {self.host}:{self.port} did not start "
                    f"({'exit code ' + str(code) if code is not None else 'no answer'}); "
                    f"see {self.log_path}"
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            # A paused server (SIGSTOP) takes SIGTERM only once it runs again.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
