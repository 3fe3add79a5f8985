"""Ports for servers whose address must be known before they listen (a child server, a
daemon in a test cluster, a node that restarts on its address).

A number from bind(port 0) lies in the kernel's ephemeral range, the range it also hands to
every outgoing connection: between the check and the server's own bind, any connection of
this process or another may take it as its local port, and the server then fails with
"address already in use". Ports below that range are only ever taken by an explicit bind, so
one that was free a moment ago stays free unless another server claims it on purpose.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

# The lowest port handed out; below it sit well-known and registered services.
PORT_LOW = 10_000
TRIES = 200
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

# Ports this process has handed out: two servers of one process that have not yet listened
# must never be given the same number.
_handed_out: set[int] = set()
_lock = threading.Lock()


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections and to bind(port 0)."""
    try:
        low, high = (int(x) for x in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def candidate_range() -> tuple[int, int]:
    """[low, high) of the ports free_port draws from: below the ephemeral range, or above it
    where a system has moved that range down to PORT_LOW; where it leaves no room on either
    side, every port from PORT_LOW (the race with outgoing connections is then back)."""
    low, high = ephemeral_range()
    if low - PORT_LOW >= 1000:
        return PORT_LOW, low
    if 65535 - high >= 1000:
        return high + 1, 65536
    return PORT_LOW, 65536


def bindable(host: str, port: int) -> bool:
    """Whether a listening socket could bind host:port now (as a server would: SO_REUSEADDR,
    so that connections of an earlier server in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def reserve(ports: Iterable[int]) -> None:
    """Ports this process's free_port must never hand out: ones its servers will listen on by
    number (a command given a base port) but have not bound yet."""
    with _lock:
        _handed_out.update(ports)


def free_port(host: str = "127.0.0.1", rng: random.Random | None = None) -> int:
    """A port outside the ephemeral range, free a moment ago and never before handed out by
    this process."""
    rng = rng or random.Random()
    low, high = candidate_range()
    for _ in range(TRIES):
        port = rng.randrange(low, high)
        with _lock:
            if port in _handed_out or not bindable(host, port):
                continue
            _handed_out.add(port)
        return port
    raise OSError(f"no free port between {low} and {high - 1} on {host} after {TRIES} tries")


def free_port_run(count: int, host: str = "127.0.0.1", rng: random.Random | None = None) -> int:
    """The first of `count` consecutive ports, each as free_port would give it (for a command
    that numbers its servers' ports up from one base)."""
    rng = rng or random.Random()
    low, high = candidate_range()
    for _ in range(TRIES):
        first = rng.randrange(low, high - count)
        ports = range(first, first + count)
        with _lock:
            if _handed_out.intersection(ports) or not all(bindable(host, p) for p in ports):
                continue
            _handed_out.update(ports)
        return first
    raise OSError(f"no {count} consecutive free ports between {low} and {high - 1} after {TRIES} tries")
