"""Domain errors. Every layer raises these; one table per wire (node/api/errors.py and the
client) maps them to and from gRPC status codes. `retriable` tells a caller whether the same
request may succeed later without change."""

from __future__ import annotations

from collections.abc import Sequence


class DomicileError(Exception):
    """Base of every error Domicile reports to a caller."""

    retriable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomicileError):
    """The request is malformed: a name, size or value outside what is allowed."""


class NotFound(DomicileError):
    """The thing named does not exist (an unknown namespace, an unknown node)."""


class AlreadyExists(DomicileError):
    """What the request would create exists already (an erasure of the subject in progress)."""


class PlacementRefused(DomicileError):
    """This region may not hold the record; `allowed_regions` lists the regions that may."""

    def __init__(self, message: str, allowed_regions: Sequence[str], rule: str = "") -> None:
        super().__init__(message)
        self.allowed_regions = tuple(allowed_regions)
        self.rule = rule


class PermissionDenied(DomicileError):
    """The caller is authenticated, but its identity, roles or declared purpose do not allow the
    call (or it is not the peer the call needs). Never retried: the same caller asking again is
    refused again. The message names what would allow it."""

    def __init__(self, message: str, policy_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.policy_ids = tuple(policy_ids)


class FailedPrecondition(DomicileError):
    """The system is not in a state that allows the request (e.g. a stale causal context)."""


class Unauthenticated(DomicileError):
    """The caller's identity could not be established: no, a malformed, an expired or a foreign
    certificate or token. The message says which, and never repeats the credential."""


class ResourceExhausted(DomicileError):
    """A bounded queue or window is full; retry after a short back-off."""

    retriable = True


class Unavailable(DomicileError):
    """The node is starting, stopping or cannot reach a dependency; retry."""

    retriable = True


class DeadlineExceeded(DomicileError):
    """The request's deadline passed before it completed; retry with a longer deadline."""

    retriable = True


class DataCorruption(DomicileError):
    """Stored data failed its checksum. Never retried: an operator must repair the node."""
