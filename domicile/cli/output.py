"""Text and JSON renderings shared by the commands."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from domicile.causality import CausalContext, Version
from domicile.client import context_from_token, context_token
from domicile.context_tokens import is_token
from domicile.errors import InvalidArgument


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, headers in capitals."""
    cells = [[h.upper() for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def dot_text(version: Version) -> str:
    return f"{version.dot.node_id}:{version.dot.counter}"


def version_json(version: Version) -> dict[str, Any]:
    try:
        text: str | None = version.value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "dot": dot_text(version),
        # `value` is the UTF-8 text when the value is text; value_base64 is always exact.
        "value": text,
        "value_base64": base64.b64encode(version.value).decode("ascii"),
        "content_type": version.content_type,
        "tombstone": version.tombstone,
        "hlc": version.hlc,
        "subject_id": version.subject_id,
        "subject_jurisdiction": version.subject_jurisdiction,
        "classification": version.classification.label,
        "origin_region": version.origin_region,
        # Fields the residency policy removed from this copy (reads only).
        "redacted_fields": list(getattr(version, "redacted_fields", ())),
    }


def context_json(context: CausalContext, token: bytes = b"") -> str:
    """The context as the CLI prints it: the node's opaque token (base64url), or the plain
    context's compact form from a node that issues no tokens (to read only: --context refuses it)."""
    if token:
        return base64.urlsafe_b64encode(token).decode("ascii").rstrip("=")
    return context_token(context)


def context_arg(text: str) -> bytes:
    """Parses --context: a token printed by this CLI, passed on unchanged. A plain context that
    older versions printed is refused (InvalidArgument, exit 2): nodes no longer accept a context
    that is not authenticated."""
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if is_token(data):
        return data
    context_from_token(text)  # malformed: says so
    raise InvalidArgument(
        "--context: this is a plain context printed by an older CLI, and it is no longer accepted "
        "(it is not authenticated); pass the context printed by this CLI's get, put, delete or scan "
        "of this key, unchanged"
    )


def print_json(obj: object, out: TextIO | None = None) -> None:
    stream = out or sys.stdout
    stream.write(json.dumps(obj, sort_keys=True) + "\n")


def write_value_line(value: bytes, prefix: str = "") -> None:
    """Writes the value's bytes as they are, so binary values survive a redirect."""
    out = sys.stdout
    out.flush()
    out.buffer.write(prefix.encode("utf-8") + value + b"\n")
    out.buffer.flush()


def iso_ms(unix_ms: int) -> str:
    """UTC time of a millisecond timestamp, ISO 8601 with milliseconds (2026-11-27T09:30:00.125Z)."""
    try:
        moment = datetime.datetime.fromtimestamp(unix_ms / 1000, tz=datetime.UTC)
    except (OverflowError, ValueError, OSError):
        # A damaged entry can carry any number; show it rather than fail.
        return f"{unix_ms} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
