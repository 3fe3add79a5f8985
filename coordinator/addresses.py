"""HOST:PORT parsing and checks, shared by the settings and the node registry."""

from __future__ import annotations

import re

from domicile.errors import InvalidArgument

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9._-]{0,252})\Z")
_IPV6_RE = re.compile(r"^\[[0-9A-Fa-f:.]{2,45}\]\Z")


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """Parses HOST:PORT or [IPv6]:PORT, accepting port 0 (callers that need a real port
    check that themselves)."""
    host, sep, port_text = text.rpartition(":")
    example = "e.g. 10.0.0.5:7401, node-1.internal:7401 or [::1]:7401"
    if not sep or not host or not port_text.isdigit() or len(port_text) > 5:
        raise InvalidArgument(f"{what} {text!r} is not HOST:PORT ({example})")
    if host.startswith("["):
        if not _IPV6_RE.match(host):
            raise InvalidArgument(f"{what} {text!r}: the host is not a bracketed IPv6 address ({example})")
    elif not _HOSTNAME_RE.match(host):
        raise InvalidArgument(
            f"{what} {text!r}: the host may hold only letters, digits, dots, dashes and underscores, "
            f"and an IPv6 host goes in brackets ({example})"
        )
    port = int(port_text)
    if port > 65535:
        raise InvalidArgument(f"{what} {text!r}: port {port} is out of range 0 to 65535")
    return host, port


def check_address(text: str, what: str, bytes_max: int) -> None:
    """A dialable HOST:PORT: port 1 to 65535, at most `bytes_max` bytes."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > bytes_max:
        raise InvalidArgument(f"{what} is {size} bytes; the limit is {bytes_max} bytes")
    _, port = split_host_port(text, what)
    if port == 0:
        raise InvalidArgument(f"{what} {text!r}: port 0 cannot be dialled; use the port the node listens on")
