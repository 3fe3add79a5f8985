"""A channel of its own for each session of a replication link.

gRPC sizes the memory arena of a new call from the largest arena an earlier call on the same
channel ended with (its call size estimate), and reserves it from the memory quota in one
request. It aborts the whole process when that request passes 1 GiB (the check
`request.max() <= MemoryRequest::max_allowed_size()` in memory_quota.cc). A replication stream
lives as long as its link, and what a call allocates in its arena stays there until the call
ends, so a session whose stream grew its arena that far (however it did) left its channel an
estimate that the next session's stream could not be created with: the process aborted in
`stub.Replicate()` after a reconnect. A fresh channel per session starts from a fresh estimate:
no session inherits what an earlier one accumulated.

Sessions end only when a link fails (the stream runs until it breaks), and after a failure the
old connection is usually gone anyway, so a new channel costs little: at most one handshake per
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc

# How long closing a session's channel may take before it is left to finish on its own. Closing
# a channel can wait on calls that grpc.aio is still cancelling; a reconnect must not wait on it.
CLOSE_WAIT_S = 5.0


class SessionChannels:
    """Opens a new channel for every session and closes the previous session's one."""

    def __init__(self, open_channel: Callable[[], grpc.aio.Channel]) -> None:
        self._open = open_channel
        self._current: grpc.aio.Channel | None = None
        self.opened = 0  # channels opened so far (one per session)

    @property
    def current(self) -> grpc.aio.Channel | None:
        return self._current

    async def for_new_session(self) -> grpc.aio.Channel:
        """A channel no earlier call has used. The previous session's channel is closed first:
        its stream has been cancelled by the time a new session starts."""
        await self.close()
        self._current = self._open()
        self.opened += 1
        return self._current

    async def close(self) -> None:
        channel, self._current = self._current, None
        if channel is not None:
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(channel.close()), CLOSE_WAIT_S)
