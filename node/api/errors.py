"""Ending a node RPC with the status of a domain error (the table is domicile.wire.errors)."""

from __future__ import annotations

import grpc

from domicile import errors
from domicile.wire.errors import ALLOWED_REGIONS_KEYS, STATUS_BY_ERROR, status_for

__all__ = ["ALLOWED_REGIONS_TRAILER", "STATUS_BY_ERROR", "abort_with", "status_for"]

ALLOWED_REGIONS_TRAILER = ALLOWED_REGIONS_KEYS[0]


async def abort_with(context: grpc.aio.ServicerContext, error: errors.DomicileError) -> None:
    """Ends the call with the status for `error` (raises, as grpc.aio's abort does)."""
    if isinstance(error, errors.PlacementRefused):
        context.set_trailing_metadata(((ALLOWED_REGIONS_TRAILER, ",".join(error.allowed_regions)),))
    await context.abort(status_for(error), error.message)
