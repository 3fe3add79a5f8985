"""What the asyncio client does where the blocking one blocks: every difference between the two
clients is a name in this module and its twin, sync_runtime. scripts/gen_sync_client.py turns
async_client.py into sync_client.py by removing async and await and using sync_runtime instead;
both modules must therefore offer the same names."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc

from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.wire.limits import CLIENT_CHANNEL_OPTIONS

R = TypeVar("R")

# A call made with a stub and the seconds left of the call's deadline.
Rpc: TypeAlias = Callable[[Any, float], Awaitable[R]]


class Lock:
    """The asyncio client holds its lock only between awaits, where no other task can run, so it
    needs no real one; the blocking client's is a threading.Lock."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def open_channel(dialer: Dialer, address: str, expected: ExpectedPeer) -> Any:
    return dialer.channel(address, expected, options=CLIENT_CHANNEL_OPTIONS)


async def close_channel(channel: Any) -> None:
    await channel.close()


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def next_message(call: Any) -> Any:
    """The next message of a server stream; None at its end."""
    message = await call.read()
    return None if message is grpc.aio.EOF else message
