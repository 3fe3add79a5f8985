"""Protobuf's wire format by hand, for messages put together from parts already serialized.

An embedded message field, and each element of a repeated one, is (tag, length, bytes): a
message built by joining such frames parses as the message protobuf would have built.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor

# Length-delimited: the wire type of an embedded message.
_LEN = 2


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def message_field_tag(message: Descriptor, field: str) -> bytes:
    """The tag of an embedded-message field, taken from the descriptor so that the framing
    follows the protos."""
    return varint(message.fields_by_name[field].number << 3 | _LEN)


def frame(tag: bytes, body: bytes) -> bytes:
    return tag + varint(len(body)) + body
