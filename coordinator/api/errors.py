"""The one table from domain errors to gRPC status codes for the coordinator."""

from __future__ import annotations

import grpc

from domicile.errors import (
    DataCorruption,
    DeadlineExceeded,
    DomicileError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PlacementRefused,
    ResourceExhausted,
    Unavailable,
)

STATUS_BY_ERROR: dict[type[DomicileError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PlacementRefused: grpc.StatusCode.FAILED_PRECONDITION,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    DataCorruption: grpc.StatusCode.DATA_LOSS,
}


def status_for(error: DomicileError) -> grpc.StatusCode:
    """The status of the most specific class in the table that `error` is an instance of."""
    for cls in type(error).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
