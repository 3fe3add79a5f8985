"""The blocking twin of async_runtime: the same names, for the generated sync_client.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.wire.limits import CLIENT_CHANNEL_OPTIONS

R = TypeVar("R")

# A call made with a stub and the seconds left of the call's deadline.
Rpc: TypeAlias = Callable[[Any, float], R]

# One Client may serve many threads.
Lock = threading.Lock


def open_channel(dialer: Dialer, address: str, expected: ExpectedPeer) -> Any:
    return dialer.sync_channel(address, expected, options=CLIENT_CHANNEL_OPTIONS)


def close_channel(channel: Any) -> None:
    channel.close()


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def next_message(call: Any) -> Any:
    """The next message of a server stream; None at its end."""
    return next(call, None)
