"""The error table, both ways: domain error -> status for the daemons, status -> domain error for
the SDK.

The node and the coordinator abort calls with status_for; the SDK turns statuses back into
`domicile.errors` types, so callers never handle gRPC status codes. A refused placement carries
the regions that may hold the record in a trailer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from domicile.errors import (
    AlreadyExists,
    DataCorruption,
    DeadlineExceeded,
    DomicileError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PlacementRefused,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

# The node sends the regions that may hold a refused record under this trailer key; the bare
# name is what the proto comment documents, so both are read.
ALLOWED_REGIONS_KEYS = ("domicile-allowed-regions", "allowed-regions")
PLACEMENT_RULE_KEY = "domicile-placement-rule"

# The server side: every daemon maps domain errors to status codes with this one table.
STATUS_BY_ERROR: Mapping[type[DomicileError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    PlacementRefused: grpc.StatusCode.FAILED_PRECONDITION,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    DataCorruption: grpc.StatusCode.DATA_LOSS,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_for(error: DomicileError) -> grpc.StatusCode:
    """The status of the most specific class in the table that `error` is an instance of."""
    for cls in type(error).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


ERROR_BY_CODE: Mapping[grpc.StatusCode, type[DomicileError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.DATA_LOSS: DataCorruption,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}

# Codes whose details alone do not tell the user which server failed.
_TRANSPORT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


def metadata_value(metadata: Iterable[Any] | None, key: str) -> str | None:
    """The value of `key` in gRPC metadata (sync tuples or aio Metadata), or None."""
    for item in metadata or ():
        k, v = item[0], item[1]
        if k == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


def split_regions(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


def error_from_status(
    code: grpc.StatusCode,
    details: str,
    trailers: Iterable[Any] | None = None,
    where: str = "",
) -> DomicileError:
    """The domain error for a status code, its details and trailing metadata.

    `where` names the server (e.g. "node eu-west-1 at 127.0.0.1:7403") and is put in front of
    messages that would not say it otherwise.
    """
    details = details or code.name.lower().replace("_", " ")
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        allowed = next(
            (v for v in (metadata_value(trailers, k) for k in ALLOWED_REGIONS_KEYS) if v is not None),
            None,
        )
        if allowed is not None:
            rule = metadata_value(trailers, PLACEMENT_RULE_KEY) or ""
            return PlacementRefused(details, split_regions(allowed), rule)
    error_type = ERROR_BY_CODE.get(code)
    if error_type is None:
        message = f"{code.name}: {details}"
        return DomicileError(f"{where}: {message}" if where else message)
    if where and code in _TRANSPORT_CODES:
        details = f"{where}: {details}"
    return error_type(details)


def error_from_rpc(error: grpc.RpcError, where: str = "") -> DomicileError:
    """The domain error for a failed call (grpc.RpcError from a sync call or grpc.aio.AioRpcError)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return error_from_status(code or grpc.StatusCode.UNKNOWN, details or "", trailers, where)
