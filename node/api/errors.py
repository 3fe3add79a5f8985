"""The one table that maps domain errors to gRPC status codes for the node's services."""

from __future__ import annotations

import grpc

from domicile import errors

ALLOWED_REGIONS_TRAILER = "domicile-allowed-regions"

STATUS_BY_ERROR: dict[type[errors.DomicileError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.PlacementRefused: grpc.StatusCode.FAILED_PRECONDITION,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.DataCorruption: grpc.StatusCode.DATA_LOSS,
}


def status_for(error: errors.DomicileError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext, error: errors.DomicileError) -> None:
    """Ends the call with the status for `error` (raises, as grpc.aio's abort does)."""
    if isinstance(error, errors.PlacementRefused):
        context.set_trailing_metadata(((ALLOWED_REGIONS_TRAILER, ",".join(error.allowed_regions)),))
    await context.abort(status_for(error), error.message)
