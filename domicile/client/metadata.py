"""What the SDK sends with every call: the bearer token and the declared purpose.

A stub is wrapped rather than each call edited, so no call of the client can go out without
them; the wrapper works for the blocking and the asyncio stubs alike.
"""

from __future__ import annotations

import functools
from typing import Any

from domicile.errors import InvalidArgument
from domicile.identity.tokens import TOKEN_CHARS_MAX
from domicile.model import check_purpose

PURPOSE_METADATA = "domicile-purpose"
AUTHORIZATION_METADATA = "authorization"

Metadata = tuple[tuple[str, str], ...]


def call_metadata(token: str | None, purpose: str) -> Metadata:
    items: list[tuple[str, str]] = []
    if token is not None:
        token = token.strip()
        if not token or len(token) > TOKEN_CHARS_MAX or any(c.isspace() for c in token):
            raise InvalidArgument(f"token must be one JWT (no spaces) of 1 to {TOKEN_CHARS_MAX} characters")
        items.append((AUTHORIZATION_METADATA, f"Bearer {token}"))
    if purpose:
        check_purpose(purpose)
        items.append((PURPOSE_METADATA, purpose))
    return tuple(items)


class WithMetadata:
    """A stub whose every method sends `metadata`."""

    def __init__(self, stub: Any, metadata: Metadata) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if not self._metadata:
            return method
        return functools.partial(method, metadata=self._metadata)
