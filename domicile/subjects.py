"""Data-subject rights and lifecycle, as the domain sees them: retention classes, legal holds,
erasure orders and request due times. Pure: no I/O, time passed in."""

from __future__ import annotations

import calendar
import datetime as dt
import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from domicile.errors import InvalidArgument

SUBJECT_ID_BYTES_MAX = 256
# Kept records listed in a region's erasure receipt (a trading customer may have thousands of
# trades under a retention obligation); each one is also in the region's audit trail.
RECEIPT_KEPT_MAX = 1000
REASON_CHARS_MAX = 1024
DAY_S = 86_400
YEAR_S = 365 * DAY_S


class RequestKind(enum.IntEnum):
    """Values equal the protobuf SubjectRequestKind."""

    UNSPECIFIED = 0
    ERASURE = 1
    ACCESS = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class RequestStatus(enum.IntEnum):
    """Values equal the protobuf SubjectRequestStatus."""

    UNSPECIFIED = 0
    OPEN = 1
    COMPLETED = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class HoldScope(enum.IntEnum):
    """Values equal the protobuf LegalHoldScope."""

    UNSPECIFIED = 0
    SUBJECT = 1
    NAMESPACE = 2
    KEY = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> HoldScope:
        try:
            scope = cls[text.upper()]
        except KeyError:
            scope = cls.UNSPECIFIED
        if scope is cls.UNSPECIFIED:
            raise InvalidArgument(f"unknown legal hold scope {text!r}; allowed: subject, namespace, key")
        return scope


@dataclass(frozen=True)
class RetentionClass:
    name: str
    period_s: int  # 0: kept until deleted
    legal_obligation: bool = False  # an erasure keeps these records (and says why)
    basis: str = ""

    def expires_at_ms(self, written_ms: int) -> int | None:
        return None if self.period_s == 0 else written_ms + self.period_s * 1000


# The original specification's defaults; a cluster config may override or add classes.
DEFAULT_RETENTION_CLASSES: tuple[RetentionClass, ...] = (
    RetentionClass(
        "user_data", 7 * YEAR_S, basis="customer relationship; kept 7 years after the last change"
    ),
    RetentionClass(
        "transaction_data",
        3 * YEAR_S,
        legal_obligation=True,
        basis="MiFID II Art. 16(6) and Art. 25 record keeping (GDPR Art. 17(3)(b))",
    ),
    RetentionClass("logs", YEAR_S, basis="operational logs"),
    RetentionClass("cache", DAY_S, basis="cached data"),
    RetentionClass("temp", 3600, basis="temporary data"),
)

_PERIOD_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|y)\s*$")
_PERIOD_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY_S, "y": YEAR_S}


def parse_period(value: Any, where: str) -> int:
    """ "7y", "24h", "3600s", "0" (none) or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{where}: period must be like 7y, 30d, 24h, 3600s or 0, not {value!r}")
    if isinstance(value, int):
        seconds = value
    else:
        text = str(value)
        if text.strip() == "0":
            return 0
        m = _PERIOD_RE.match(text)
        if m is None:
            raise InvalidArgument(f"{where}: period must be like 7y, 30d, 24h, 3600s or 0, not {text!r}")
        seconds = int(m.group(1)) * _PERIOD_UNITS[m.group(2)]
    if seconds < 0 or seconds > 100 * YEAR_S:
        raise InvalidArgument(f"{where}: period must be 0 to 100 years")
    return seconds


def parse_retention_classes(raw: Any, source: str) -> tuple[RetentionClass, ...]:
    """The `retention_classes:` mapping of a cluster config, over the defaults."""
    classes = {c.name: c for c in DEFAULT_RETENTION_CLASSES}
    if raw is None:
        return tuple(classes.values())
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{source}: retention_classes must be a mapping of name to settings")
    for name, settings in raw.items():
        where = f"{source}: retention_classes.{name}"
        if not isinstance(settings, Mapping):
            raise InvalidArgument(f"{where}: expected a mapping with period, legal_obligation, basis")
        unknown = sorted(set(settings) - {"period", "legal_obligation", "basis"})
        if unknown:
            raise InvalidArgument(
                f"{where}: unknown fields {unknown}; allowed: period, legal_obligation, basis"
            )
        if "period" not in settings:
            raise InvalidArgument(f"{where}: missing required field 'period'")
        obligation = settings.get("legal_obligation", False)
        if not isinstance(obligation, bool):
            raise InvalidArgument(f"{where}: legal_obligation must be true or false")
        classes[str(name)] = RetentionClass(
            str(name), parse_period(settings["period"], where), obligation, str(settings.get("basis", ""))
        )
    return tuple(classes.values())


@dataclass(frozen=True)
class LegalHold:
    hold_id: str
    scope: HoldScope
    subject_id: str = ""
    namespace: str = ""
    key: str = ""
    reason: str = ""
    placed_ms: int = 0
    # The verified identity of the DPO who placed it ("" when not known).
    placed_by: str = ""

    def covers(self, namespace: str, key: str, subject_id: str) -> bool:
        if self.scope is HoldScope.SUBJECT:
            return bool(subject_id) and subject_id == self.subject_id
        if self.scope is HoldScope.NAMESPACE:
            return namespace == self.namespace
        if self.scope is HoldScope.KEY:
            return namespace == self.namespace and key == self.key
        # A scope this version does not know (from a newer coordinator) fails safe: the hold
        # covers every record, so nothing it may have meant is expired or erased meanwhile.
        return True

    def describe(self) -> str:
        target = {
            HoldScope.SUBJECT: "the subject",
            HoldScope.NAMESPACE: f"namespace {self.namespace}",
            HoldScope.KEY: f"{self.namespace}/{self.key}",
        }.get(self.scope, "every record (a hold scope this node does not know)")
        return f"legal hold {self.hold_id} on {target}: {self.reason}"


def hold_covering(holds: Iterable[LegalHold], namespace: str, key: str, subject_id: str) -> LegalHold | None:
    return next((h for h in holds if h.covers(namespace, key, subject_id)), None)


@dataclass(frozen=True)
class ErasureOrder:
    request_id: str
    subject_id: str
    requested_ms: int
    regions_pending: tuple[str, ...] = ()
    # The verified identity of the DPO who asked for it ("" when not known).
    requested_by: str = ""


@dataclass(frozen=True)
class HoldRelease:
    """How a legal hold was released: when, why and by whom (the verified identity of the DPO;
    "" when not known)."""

    hold_id: str
    released_ms: int
    reason: str
    released_by: str = ""


# The releases a set of subject orders carries: the newest, so that each region audits a hold's
# release as the DPO who released it. A node that was away for more releases than this audits
# the older ones as the coordinator's.
RELEASES_CARRIED = 256


@dataclass(frozen=True)
class SubjectOrders:
    """The erasure orders some region has not completed yet and the legal holds in force,
    oldest first, as of a topology revision, with the RELEASES_CARRIED latest hold releases,
    newest first. Nodes receive them on a stream of their own (WatchSubjectOrders), not in the
    topology, so that their number never weighs on it."""

    revision: int = 0
    erasures: tuple[ErasureOrder, ...] = ()
    holds: tuple[LegalHold, ...] = ()
    released: tuple[HoldRelease, ...] = ()


# What a subject id written from now on may not hold: control characters (Unicode Cc), the line
# and paragraph separators and the bidirectional overrides and isolates, which garble the logs,
# listings and receipts an id appears in. Anything else a name may hold is allowed: a no-break
# space, a zero-width non-joiner (Persian and Indic names), any script.
_NOT_IN_SUBJECT_IDS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def check_subject_text(subject_id: str) -> None:
    """Raises InvalidArgument when a write's subject id holds a character a new id may not."""
    if _NOT_IN_SUBJECT_IDS.search(subject_id):
        raise InvalidArgument(
            "subject id must be text without control characters (U+0000-U+001F, U+007F-U+009F), "
            "line separators (U+2028, U+2029) or bidirectional controls (U+202A-U+202E, "
            "U+2066-U+2069)"
        )


def check_subject_id(subject_id: str) -> None:
    """The id of a data subject's request or hold: any id a record may carry, so that every
    record can be exported, erased and held, those written before check_subject_text (which
    checked only the length) or replicated from a node that did included."""
    if not subject_id:
        raise InvalidArgument("a subject id is required (1 to 256 bytes)")
    if len(subject_id.encode("utf-8", "surrogatepass")) > SUBJECT_ID_BYTES_MAX:
        raise InvalidArgument(f"subject id is longer than {SUBJECT_ID_BYTES_MAX} bytes")


def check_reason(reason: str, *, required: bool) -> None:
    if required and not reason.strip():
        raise InvalidArgument("a reason is required (for the record)")
    if len(reason) > REASON_CHARS_MAX:
        raise InvalidArgument(f"reason is longer than {REASON_CHARS_MAX} characters")


def _add_month(ms: int) -> int:
    """One calendar month later (GDPR Art. 12(3)), clamped to the month's last day."""
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    day = min(t.day, calendar.monthrange(year, month)[1])
    return int(t.replace(year=year, month=month, day=day).timestamp() * 1000)


def due_ms(received_ms: int, subject_jurisdiction: str) -> int:
    """When a request is due: 45 days for California subjects (CCPA, Cal. Civ. Code 1798.130),
    one month for everyone else (GDPR Art. 12(3), the strictest common deadline)."""
    if subject_jurisdiction == "US-CA":
        return received_ms + 45 * DAY_S * 1000
    return _add_month(received_ms)


@dataclass(frozen=True)
class KeptRecord:
    namespace: str
    key: str
    reason: str


@dataclass(frozen=True)
class RegionReceipt:
    """What one region did for an erasure request."""

    region: str
    node_id: str
    started_ms: int
    completed_ms: int
    erased: tuple[tuple[str, int], ...] = ()  # (namespace, records), sorted
    kept: tuple[KeptRecord, ...] = ()
    keys_destroyed: int = 0
    audit_seq: int = 0
    kept_total: int = 0  # `kept` lists at most RECEIPT_KEPT_MAX of them
    # Set on a receipt of what the region erased at the release of this hold, which had kept
    # records of the subject from the erasure (SubjectRequest.release_receipts); kept_total then
    # counts what other holds or legal obligations still keep, and `kept` is empty.
    released_hold_id: str = ""

    @property
    def erased_total(self) -> int:
        return sum(n for _, n in self.erased)


@dataclass(frozen=True)
class SubjectRequest:
    request_id: str
    kind: RequestKind
    subject_id: str
    subject_jurisdiction: str
    reason: str
    received_ms: int
    due_ms: int
    status: RequestStatus
    regions_pending: tuple[str, ...] = ()
    receipts: tuple[RegionReceipt, ...] = ()
    completed_ms: int = 0
    records_exported: int = 0
    # The verified identity of whoever opened it ("" when not known).
    requested_by: str = ""
    # Erasures: what regions erased later, at the release of holds that had kept records of the
    # subject (one receipt per node and hold, as reported); `receipts` keeps the erasure's own.
    release_receipts: tuple[RegionReceipt, ...] = ()

    def overdue(self, now_ms: int) -> bool:
        return self.status is RequestStatus.OPEN and now_ms > self.due_ms
