"""The coordinator maps domain errors to gRPC status codes with the shared table."""

from __future__ import annotations

from domicile.wire.errors import STATUS_BY_ERROR, status_for

__all__ = ["STATUS_BY_ERROR", "status_for"]
