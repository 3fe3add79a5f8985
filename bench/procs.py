"""Child processes of a benchmark run: started with their output in log files, awaited until
they print their ready line, and always stopped (on success, error, Ctrl-C or SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
LOG_TAIL_CHARS = 2000
# Lines a worker may print before its result; a worker is small, so this is generous.
WORKER_LINE_BYTES_MAX = 1024 * 1024


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _open_logs(out_path: Path, err_path: Path) -> tuple[BinaryIO, BinaryIO]:
    # The child inherits the descriptors; ours are closed once it has started.
    return open(out_path, "wb"), open(err_path, "wb")


def log_tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-LOG_TAIL_CHARS:]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, from /proc; None where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name, which may itself contain spaces.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    out_path: Path
    err_path: Path


class ChildError(RuntimeError):
    pass


class Children:
    """Every process the benchmark starts. Daemons write stdout and stderr to files in
    `log_dir`; workers talk over pipes (one command in, one result line out)."""

    def __init__(self, log_dir: Path, cwd: Path) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.children: dict[str, Child] = {}

    async def _spawn(
        self, name: str, argv: list[str], *, pipes: bool, env: dict[str, str] | None = None
    ) -> Child:
        if name in self.children:
            raise ChildError(f"a child named {name!r} is already running")
        out_path = self.log_dir / f"{name}.out"
        err_path = self.log_dir / f"{name}.err"
        out, err = _open_logs(out_path, err_path)
        with out, err:
            # The child gets SIGTERM when we die (see domicile.die_with_parent).
            guard = [sys.executable, "-m", "domicile.die_with_parent", str(os.getpid())]
            process = await asyncio.create_subprocess_exec(
                *guard,
                sys.executable,
                *argv,
                stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if pipes else out,
                stderr=err,
                cwd=self.cwd,
                env={**child_env(), **(env or {})},
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
                limit=WORKER_LINE_BYTES_MAX,
            )
        child = Child(name, process, out_path, err_path)
        self.children[name] = child
        return child

    async def start_daemon(
        self,
        name: str,
        argv: list[str],
        ready: re.Pattern[str],
        timeout_s: float = READY_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> re.Match[str]:
        """Starts a daemon (with `env` added to its environment) and waits until its stdout
        matches `ready`; returns the match."""
        child = await self._spawn(name, argv, pipes=False, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            text = child.out_path.read_text(errors="replace")
            match = ready.search(text)
            if match:
                return match
            if child.process.returncode is not None:
                raise ChildError(
                    f"{name} exited with code {child.process.returncode} before it was ready; "
                    f"stderr ends with:\n{log_tail(child.err_path)}"
                )
            if time.monotonic() > deadline:
                raise ChildError(
                    f"{name} printed no ready line within {timeout_s:.0f} s; "
                    f"stderr ends with:\n{log_tail(child.err_path)}"
                )
            await asyncio.sleep(0.02)

    async def start_listening(
        self, name: str, argv: list[str], port: int, timeout_s: float = READY_TIMEOUT_S
    ) -> Child:
        """Starts a server that prints no ready line and waits until 127.0.0.1:port accepts."""
        child = await self._spawn(name, argv, pipes=False)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if child.process.returncode is not None:
                    raise ChildError(
                        f"{name} exited with code {child.process.returncode} before it listened; "
                        f"stderr ends with:\n{log_tail(child.err_path)}"
                    ) from None
                if time.monotonic() > deadline:
                    raise ChildError(
                        f"{name} did not listen on port {port} within {timeout_s:.0f} s"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return child

    async def start_worker(self, name: str, argv: list[str]) -> Child:
        return await self._spawn(name, argv, pipes=True)

    async def read_line(self, child: Child, timeout_s: float) -> str:
        """One line from a worker's stdout; fails with its stderr when it ends or stalls."""
        stream = child.process.stdout
        if stream is None:
            raise ChildError(f"{child.name} has no stdout pipe")
        try:
            line = await asyncio.wait_for(stream.readline(), timeout_s)
        except TimeoutError:
            raise ChildError(
                f"{child.name} printed nothing within {timeout_s:.0f} s; stderr ends with:\n"
                f"{log_tail(child.err_path)}"
            ) from None
        if not line:
            await child.process.wait()
            raise ChildError(
                f"{child.name} exited with code {child.process.returncode}; stderr ends with:\n"
                f"{log_tail(child.err_path)}"
            )
        return line.decode().strip()

    async def send_line(self, child: Child, line: str) -> None:
        stream = child.process.stdin
        if stream is None:
            raise ChildError(f"{child.name} has no stdin pipe")
        stream.write(line.encode() + b"\n")
        await stream.drain()

    async def stop(self, name: str) -> None:
        child = self.children.pop(name, None)
        if child is None:
            return
        process = child.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.stdin is not None:
            process.stdin.close()

    async def kill(self, name: str) -> None:
        """SIGKILL, as a crash would: no shutdown code runs (fault injection)."""
        child = self.children.pop(name, None)
        if child is None:
            return
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
        await child.process.wait()

    def send_signal(self, name: str, sig: signal.Signals) -> None:
        """SIGSTOP / SIGCONT and the like to a running child (fault injection)."""
        child = self.children.get(name)
        if child is not None and child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(sig)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(name) for name in list(self.children)), return_exceptions=True)

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by this process (all threads) and by every running child."""
        snapshot = {"bench client": time.process_time()}
        for name, child in self.children.items():
            used = cpu_seconds(child.process.pid)
            if used is not None:
                snapshot[name] = used
        return snapshot

    def kill_all_now(self) -> None:
        """Last resort when the event loop is gone: SIGKILL whatever is left."""
        for child in self.children.values():
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGKILL)
        self.children.clear()
