"""Plain value types shared by every layer: classifications, conflict modes and limits."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from domicile.errors import InvalidArgument


class Classification(enum.IntEnum):
    """How sensitive a record is; ordered from least to most strict (public < ... ).

    The numeric values equal the protobuf enum values so that the wire mapping is the identity.
    Strictness order is given by STRICTNESS, not by the number.
    """

    UNSPECIFIED = 0
    PUBLIC = 1
    INTERNAL = 2
    CONFIDENTIAL = 3
    PERSONAL = 4
    SENSITIVE_PERSONAL = 5
    FINANCIAL = 6

    @classmethod
    def parse(cls, text: str) -> Classification:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            allowed = ", ".join(c.name.lower() for c in cls if c is not cls.UNSPECIFIED)
            raise InvalidArgument(f"unknown classification {text!r}; allowed: {allowed}") from None

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def strictness(self) -> int:
        return STRICTNESS[self]


# Financial records are about people too and fall under retention laws, so they rank just
# below sensitive personal data.
STRICTNESS = {
    Classification.UNSPECIFIED: 0,
    Classification.PUBLIC: 1,
    Classification.INTERNAL: 2,
    Classification.CONFIDENTIAL: 3,
    Classification.PERSONAL: 4,
    Classification.FINANCIAL: 5,
    Classification.SENSITIVE_PERSONAL: 6,
}


class ConflictMode(enum.IntEnum):
    """How a namespace resolves concurrent writes (values equal the protobuf enum)."""

    UNSPECIFIED = 0
    SIBLINGS = 1
    LWW = 2

    @classmethod
    def parse(cls, text: str) -> ConflictMode:
        try:
            mode = cls[text.strip().upper()]
        except KeyError:
            mode = cls.UNSPECIFIED
        if mode is cls.UNSPECIFIED:
            raise InvalidArgument(f"unknown conflict mode {text!r}; allowed: siblings, lww")
        return mode


@dataclass(frozen=True)
class Limits:
    """Every size and count a node accepts. Units go last in names."""

    key_bytes_max: int = 1024
    value_bytes_max: int = 1024 * 1024
    content_type_bytes_max: int = 255
    subject_id_bytes_max: int = 256
    context_entries_max: int = 256
    scan_page_size_max: int = 1000
    scan_page_size_default: int = 100
    write_queue_records_max: int = 10_000
    # Value bytes waiting in the write queue: 10,000 records at the value limit would be 10 GiB.
    write_queue_bytes_max: int = 64 * 1024 * 1024
    # A scan page stops early (with a next_page_token) once its records weigh this much.
    scan_page_bytes_max: int = 4 * 1024 * 1024
    # What one record may weigh in a read's answer (a Get, or one record of a scan page): every
    # sibling, so that an answer always fits in a message (the storage response limit is twice it).
    read_record_bytes_max: int = 16 * 1024 * 1024
    commit_batch_records_max: int = 1000
    replication_batch_records_max: int = 500
    replication_batch_bytes_max: int = 4 * 1024 * 1024
    # Unacknowledged per link: this many full batches' worth of records and bytes, however small
    # the batches are (node.replication.window); enough to keep a long round trip busy.
    replication_inflight_batches_max: int = 32
    # How far one replication batch may move a target's position for its source. A source's log
    # positions have no holes and it reads replication_batch_records_max entries per batch, so an
    # honest batch moves it at most that far; the rest is room for sources with larger batches.
    replication_position_gap_max: int = 10_000
    # The newest change-log entries kept in memory, so that senders of targets close behind
    # read no store and make no hop off the event loop; further behind, they read the store.
    # Bytes count values, keys and text fields plus about 1 KiB per entry for its objects.
    log_tail_records_max: int = 10_000
    log_tail_bytes_max: int = 16 * 1024 * 1024
    request_deadline_default_s: float = 10.0
    rpc_deadline_s: float = 5.0


# \Z, not $: $ also matches before a final newline, which made "trades\n" a valid name.
NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
JURISDICTION_RE = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?\Z")
PURPOSE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")


def check_namespace_name(name: str) -> None:
    if not NAMESPACE_RE.match(name):
        raise InvalidArgument(
            f"invalid namespace name {name!r}: use 1 to 63 lower-case letters, digits and "
            "underscores, starting with a letter"
        )


def check_purpose(purpose: str) -> None:
    """A processing purpose (GDPR Art. 5(1)(b)): a short identifier such as trade_execution."""
    if not PURPOSE_RE.match(purpose):
        raise InvalidArgument(
            f"invalid purpose {purpose!r}: use 1 to 32 lower-case letters, digits and underscores, "
            "starting with a letter"
        )


# A node's writer id (the node id in its dots and change-log entries) is its node id in its
# first incarnation, and "<node id>.<epoch>" after a restore: a node id cannot contain a dot, so
# no incarnation's writer id is ever another node's or another incarnation's.
WRITER_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}(\.[1-9][0-9]{0,18})?\Z")


def writer_id(node_id: str, epoch: int) -> str:
    return node_id if epoch == 0 else f"{node_id}.{epoch}"


def check_writer_id(writer: str) -> None:
    if not WRITER_ID_RE.match(writer):
        raise InvalidArgument(
            f"invalid writer id {writer!r}: a node id (1 to 63 lower-case letters, digits and "
            "dashes), optionally followed by '.' and its incarnation epoch"
        )


def check_node_id(node_id: str) -> None:
    if not NODE_ID_RE.match(node_id):
        raise InvalidArgument(
            f"invalid node id {node_id!r}: use 1 to 63 lower-case letters, digits and dashes"
        )


def check_text(text: str, what: str) -> None:
    """Text goes on the wire as UTF-8, which cannot carry a lone surrogate (a str can hold one:
    '\\ud800', or a file name decoded with surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{what} is not valid Unicode text: it contains a lone surrogate at character {exc.start}"
        ) from None


def check_key(key: str, limits: Limits) -> None:
    size = len(key.encode("utf-8", "surrogatepass"))
    if size == 0:
        raise InvalidArgument(f"key is empty; a key is 1 to {limits.key_bytes_max} bytes of UTF-8")
    if size > limits.key_bytes_max:
        raise InvalidArgument(f"key is {size} bytes; the limit is {limits.key_bytes_max} bytes")
    if "\x00" in key:
        raise InvalidArgument("key contains a NUL character, which is not allowed")
    check_text(key, "key")


REQUEST_ID_CHARS_MAX = 64
_REQUEST_ID = re.compile(rf"[A-Za-z0-9_.:-]{{1,{REQUEST_ID_CHARS_MAX}}}")


def check_request_id(request_id: str) -> None:
    """A client's id of a logical write; "" (none given) is allowed."""
    if request_id and not _REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument(
            f"request id {request_id[:80]!r} is not allowed; use 1 to {REQUEST_ID_CHARS_MAX} letters, "
            "digits, '-', '_', '.' or ':' (a UUID), the same for every retry of one write"
        )


def check_value(value: bytes, limits: Limits) -> None:
    if len(value) > limits.value_bytes_max:
        raise InvalidArgument(f"value is {len(value)} bytes; the limit is {limits.value_bytes_max} bytes")


def check_jurisdiction(code: str) -> None:
    if code and not JURISDICTION_RE.match(code):
        raise InvalidArgument(
            f"invalid subject jurisdiction {code!r}: use ISO 3166-1 alpha-2 (e.g. DE) or "
            "ISO 3166-2 (e.g. US-CA)"
        )
