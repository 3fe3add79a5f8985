"""The tamper-evident audit trail: entries, their hash chain, signed heads and the verifier.

Each region's node appends every decision, write, personal-data read, replication step, policy
change and audit read to a log whose entries are chained by hash. After each batch the node
signs the head of the chain (size and hash of the last entry) with its Ed25519 key and exports
it to the coordinator. A verifier holding a head detects entries that were altered, deleted,
moved or cut off, and a chain that was rebuilt end to end (every hash recomputed) so that it is
consistent again, because its head no longer matches the one the coordinator was shown.

Pure: no I/O. The node's store (node.compliance.audit_log), the coordinator and the CLI all
use this module, so that they agree byte for byte on encodings.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from domicile.errors import DataCorruption, InvalidArgument

HASH_BYTES = 32
GENESIS = bytes(HASH_BYTES)
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SUBJECT_KEY_BYTES_MIN = 16

# Text fields hold names, keys (at most 1024 bytes), hashes and short notes; the bound keeps
# every body small enough to decode without a second thought.
TEXT_CHARS_MAX = 1024
BODY_BYTES_MAX = 256 * 1024
# Integers are stored as SQLite INTEGER and protobuf uint64; both hold 0 .. 2^63-1.
INT_MAX = (1 << 63) - 1

# Domain tags keep a chain hash from ever equalling a head message or another protocol's hash.
_ENTRY_TAG = b"domicile.audit.entry.v1\x00"
_HEAD_TAG = b"domicile.audit.head.v1\x00"

# How far (in entries) the verifier looks back or ahead to check the link of an entry that was
# moved; bounds its memory whatever the size of the log.
VERIFY_WINDOW_ENTRIES = 4096

KINDS = ("modified", "missing", "reordered", "truncated", "rewritten", "bad-signature", "untrusted-key")


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed")


# ASCII escapes make the encoding total (lone surrogates in keys survive) and still UTF-8.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


# The string escaping of _ENCODER (ASCII, total): what AuditEntry uses to write its fields.
_quote = json.encoder.encode_basestring_ascii


def _canonical_json(obj: object) -> bytes:
    return _ENCODER.encode(obj).encode("ascii")


@dataclass(frozen=True)
class AuditEntry:
    """One audited event. `seq` is 0 only for an entry not yet numbered by the log."""

    seq: int
    time_ms: int
    hlc: int
    region: str
    node_id: str
    principal: str
    action: str
    namespace: str = ""
    key: str = ""
    subject: str = ""
    decision: str = ""
    rule: str = ""
    policy_version: str = ""
    detail: str = ""

    def __post_init__(self) -> None:
        # Every audited decision builds one: the checks read the fields straight from the
        # instance dict (a frozen dataclass's fields live there), one pass each.
        values = self.__dict__
        for name in _INT_FIELDS:
            value = values[name]
            # bool is an int in Python but not in the encoding.
            if type(value) is not int or not 0 <= value <= INT_MAX:
                raise InvalidArgument(f"audit entry {name} is {value!r}; it must be an integer 0..2^63-1")
        for name in _TEXT_FIELDS:
            value = values[name]
            if type(value) is not str:
                raise InvalidArgument(f"audit entry {name} is {type(value).__name__}; it must be a string")
            if len(value) > TEXT_CHARS_MAX:
                raise InvalidArgument(
                    f"audit entry {name} is {len(value)} characters; at most {TEXT_CHARS_MAX} are allowed"
                )
        for name in _REQUIRED_FIELDS:
            if not values[name]:
                raise InvalidArgument(f"audit entry {name} is empty; every entry names its {name}")

    def _body(self) -> bytes:
        # Encoded once per entry: a carried entry is encoded for the store's commit and again,
        # numbered, for the log; the numbered body is this one with its seq replaced. Written
        # out field by field in sorted key order with the encoder's own string escaping (the
        # fields are checked to be exactly str and int): the bytes _canonical_json gives for
        # the fields' dict, without building the dict and sorting its keys at every entry.
        q = _quote
        return (
            f'{{"action":{q(self.action)},"decision":{q(self.decision)},"detail":{q(self.detail)},'
            f'"hlc":{self.hlc},"key":{q(self.key)},"namespace":{q(self.namespace)},'
            f'"node_id":{q(self.node_id)},"policy_version":{q(self.policy_version)},'
            f'"principal":{q(self.principal)},"region":{q(self.region)},"rule":{q(self.rule)},'
            f'"seq":{self.seq},"subject":{q(self.subject)},"time_ms":{self.time_ms}}}'
        ).encode("ascii")

    def encode(self, seq: int | None = None) -> bytes:
        """Canonical JSON: sorted keys, no spaces, ASCII (hence UTF-8). Equal entries, equal bytes.
        `seq` numbers an entry as it is appended (cheaper than building a numbered copy)."""
        # Kept in the instance dict (not a field: equality and hashing ignore it).
        body: bytes | None = self.__dict__.get("_encoded")
        if body is None:
            body = self.__dict__["_encoded"] = self._body()
        if seq is None:
            return body
        if type(seq) is not int or not 1 <= seq <= INT_MAX:
            raise InvalidArgument(f"audit entry seq is {seq!r}; it must be an integer 1..2^63-1")
        if seq == self.seq:
            return body
        # In the canonical form every quote inside a string is escaped, so `,"seq":` occurs
        # once, as the key ("seq" is neither the first nor the last key in sorted order).
        field_ = b',"seq":%d,' % self.seq
        at = body.index(field_)
        return body[:at] + b',"seq":%d,' % seq + body[at + len(field_) :]

    @classmethod
    def decode_unnumbered(cls, body: bytes) -> AuditEntry:
        """Parses the canonical encoding of an entry not yet numbered (seq 0), as a store's
        commit carries it (node.compliance.audit_log); anything else is corrupt."""
        entry = cls._parse(body)
        if entry.seq != 0:
            raise DataCorruption(
                f"carried audit entry has seq {entry.seq}; a carried entry is unnumbered (0)"
            )
        return entry

    @classmethod
    def decode(cls, body: bytes) -> AuditEntry:
        """Parses a stored body; anything but a canonical encoding of a numbered entry is corrupt."""
        entry = cls._parse(body)
        if entry.seq < 1:
            raise DataCorruption(f"audit entry body has seq {entry.seq}; stored entries are numbered from 1")
        return entry

    @classmethod
    def _parse(cls, body: bytes) -> AuditEntry:
        if len(body) > BODY_BYTES_MAX:
            raise DataCorruption(
                f"audit entry body is {len(body)} bytes; at most {BODY_BYTES_MAX} are allowed"
            )
        try:
            obj = _DECODER.decode(body.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as error:
            raise DataCorruption(f"audit entry body is not canonical JSON: {error}") from None
        if not isinstance(obj, dict):
            raise DataCorruption(f"audit entry body is a JSON {type(obj).__name__}, not an object")
        if obj.keys() != _FIELD_SET:
            unknown = sorted(set(obj) - _FIELD_SET)
            absent = sorted(_FIELD_SET - set(obj))
            raise DataCorruption(f"audit entry body has unknown fields {unknown} and lacks fields {absent}")
        try:
            entry = cls(**obj)
        except InvalidArgument as error:
            raise DataCorruption(error.message) from None
        if entry.encode() != body:
            raise DataCorruption("audit entry body is valid JSON but not in canonical form")
        return entry


_FIELD_NAMES = tuple(f.name for f in fields(AuditEntry))
_FIELD_SET = frozenset(_FIELD_NAMES)
_INT_FIELDS = ("seq", "time_ms", "hlc")
_TEXT_FIELDS = tuple(name for name in _FIELD_NAMES if name not in _INT_FIELDS)
_REQUIRED_FIELDS = ("region", "node_id", "principal", "action")


def chain_hash(prev: bytes, body: bytes) -> bytes:
    """The hash of an entry: sha256(tag || hash of the previous entry (or GENESIS) || body)."""
    if len(prev) != HASH_BYTES:
        raise InvalidArgument(f"previous hash is {len(prev)} bytes; a chain hash is {HASH_BYTES} bytes")
    return hashlib.sha256(_ENTRY_TAG + prev + body).digest()


def subject_hash(key: bytes, subject_id: str) -> str:
    """Keyed hash (HMAC-SHA256, hex) of a data subject's id, so the log can be searched for a
    subject without storing the id. "" for no subject."""
    if len(key) < SUBJECT_KEY_BYTES_MIN:
        raise InvalidArgument(
            f"subject hash key is {len(key)} bytes; it must be at least {SUBJECT_KEY_BYTES_MIN} random bytes"
        )
    if not subject_id:
        return ""
    return hmac.digest(key, subject_id.encode("utf-8", "surrogatepass"), "sha256").hex()


@dataclass(frozen=True)
class StoredEntry:
    """An entry as the log stores it: position, canonical body and chain hash."""

    seq: int
    body: bytes
    hash: bytes


@dataclass(frozen=True)
class SignedHead:
    """A node's signed statement: "my audit log has `size` entries and ends in `head`"."""

    region: str
    node_id: str
    size: int
    head: bytes
    time_ms: int
    public_key: bytes
    signature: bytes

    def signed_message(self) -> bytes:
        """What the signature covers: every field but the signature, canonical and domain-tagged."""
        return _HEAD_TAG + _canonical_json(
            {
                "head": self.head.hex(),
                "node_id": self.node_id,
                "public_key": self.public_key.hex(),
                "region": self.region,
                "size": self.size,
                "time_ms": self.time_ms,
            }
        )

    def signature_valid(self) -> bool:
        """True when `signature` is `public_key`'s signature of signed_message()."""
        if len(self.public_key) != PUBLIC_KEY_BYTES or len(self.signature) != SIGNATURE_BYTES:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(self.signature, self.signed_message())
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class ClosedChain:
    """A node's audit chain that a later incarnation of the node (restored, or found put back
    from an older copy) closed by starting a new one: its last head the coordinator accepted,
    kept for good. The entries it covers may be gone from the node's log; the head says how many
    there were and what they hashed to."""

    head: SignedHead
    incarnation: int
    accepted_unix_ms: int
    closed_unix_ms: int


@dataclass(frozen=True)
class HeadOnRecord:
    """What the coordinator holds of one node's audit chains: the last head it accepted of the
    current chain, when, the incarnation that exported it, and the chains closed before it."""

    head: SignedHead
    accepted_unix_ms: int
    incarnation: int = 0
    # The newest closed chains, oldest first, and how many older ones the answer left out.
    closed: tuple[ClosedChain, ...] = ()
    closed_omitted: int = 0


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key that heads carry and the coordinator pins."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_head(
    key: Ed25519PrivateKey,
    *,
    region: str,
    node_id: str,
    size: int,
    head: bytes,
    time_ms: int,
    public_key: bytes | None = None,
) -> SignedHead:
    """`public_key` is public_key_bytes(key), for a caller that signs often: deriving it costs
    about a third of a signature."""
    if not region or not node_id:
        raise InvalidArgument("a signed audit head names its region and node; one of them is empty")
    if not 0 <= size <= INT_MAX:
        raise InvalidArgument(f"audit head size is {size}; it must be 0..2^63-1")
    if not 0 <= time_ms <= INT_MAX:
        raise InvalidArgument(f"audit head time is {time_ms} ms; it must be 0..2^63-1")
    if len(head) != HASH_BYTES:
        raise InvalidArgument(f"audit head hash is {len(head)} bytes; it must be {HASH_BYTES}")
    if size == 0 and head != GENESIS:
        raise InvalidArgument("an empty audit log's head is GENESIS (32 zero bytes)")
    if public_key is None:
        public_key = public_key_bytes(key)
    unsigned = SignedHead(region, node_id, size, bytes(head), time_ms, public_key, b"")
    return SignedHead(
        region, node_id, size, bytes(head), time_ms, unsigned.public_key, key.sign(unsigned.signed_message())
    )


@dataclass(frozen=True)
class Problem:
    """One damaged place: kind (see KINDS), the entry or head size concerned, and what is wrong."""

    kind: str
    seq: int
    message: str


@dataclass
class VerifyReport:
    """What verify_log found. `anchored_size` counts the entries a valid, trusted signed head
    vouches for (0 when there is none, or when the log does not match it); `problems_omitted`
    counts entry problems beyond problems_max."""

    entries_checked: int
    anchored_size: int
    problems: list[Problem]
    problems_omitted: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.problems_omitted


@dataclass
class _Deferred:
    """An entry whose predecessor (by the entry's own seq) was not seen yet: the entry was moved,
    or follows a deleted one."""

    row: int
    body: bytes
    hash: bytes


@dataclass
class _Verifier:
    head: SignedHead | None
    problems_max: int
    report: VerifyReport = field(default_factory=lambda: VerifyReport(0, 0, []))
    last_row: int = 0
    head_checked: bool = False
    # Entry seq (as its body says) -> hashes its successor may chain on: the stored hash, plus
    # the recomputed one when they differ (so an altered stored hash is reported once, not twice).
    recent: collections.OrderedDict[int, tuple[bytes, ...]] = field(
        default_factory=lambda: collections.OrderedDict({0: (GENESIS,)})
    )
    # Predecessor seq -> entries waiting for it.
    deferred: collections.OrderedDict[int, list[_Deferred]] = field(default_factory=collections.OrderedDict)
    deferred_count: int = 0

    def problem(self, kind: str, seq: int, message: str) -> None:
        if len(self.report.problems) < self.problems_max:
            self.report.problems.append(Problem(kind, seq, message))
        else:
            self.report.problems_omitted += 1

    def add(self, entry: StoredEntry) -> None:
        self.report.entries_checked += 1
        row = entry.seq
        if row <= self.last_row:
            self.problem(
                "reordered",
                row,
                f"entry {row} is stored after entry {self.last_row}: the log is out of order",
            )
        else:
            if row > self.last_row + 1:
                first, last = self.last_row + 1, row - 1
                span = f"entry {first} is" if first == last else f"entries {first}..{last} are"
                self.problem("missing", first, f"{span} missing: deleted from the log")
            self.last_row = row

        decoded = True
        seq = row
        try:
            seq = AuditEntry.decode(entry.body).seq
        except DataCorruption as error:
            decoded = False
            self.problem("modified", row, f"entry {row} was altered: {error.message}")
        if seq != row:
            self.problem("reordered", row, f"position {row} holds entry {seq}: entries were moved or swapped")
        hash_ok = len(entry.hash) == HASH_BYTES
        if not hash_ok:
            self.problem(
                "modified",
                row,
                f"entry {row} was altered: its stored hash is {len(entry.hash)} bytes, not 32",
            )

        recomputed: bytes | None = None
        prevs = self.recent.get(seq - 1)
        if prevs is None:
            # The predecessor was deleted (reported as missing), is stored later (this entry was
            # moved, and is checked when it arrives) or is beyond the window.
            self.defer(seq - 1, _Deferred(row, entry.body, entry.hash))
        else:
            linked, recomputed = _link(prevs, entry.body, entry.hash)
            if not linked and decoded and hash_ok:
                self.problem("modified", row, _altered_message(row, seq))
        self.remember(seq, entry.hash if hash_ok else None, recomputed)
        self.check_head(seq, row, entry.hash, recomputed)
        prevs_of_next = self.recent.get(seq)
        for waiting in self.deferred.pop(seq, []):
            self.deferred_count -= 1
            if prevs_of_next is not None and not _link(prevs_of_next, waiting.body, waiting.hash)[0]:
                self.problem("modified", waiting.row, _altered_message(waiting.row, seq + 1))

    def defer(self, prev_seq: int, waiting: _Deferred) -> None:
        self.deferred.setdefault(prev_seq, []).append(waiting)
        self.deferred_count += 1
        while self.deferred_count > VERIFY_WINDOW_ENTRIES:
            _, dropped = self.deferred.popitem(last=False)
            self.deferred_count -= len(dropped)

    def remember(self, seq: int, stored: bytes | None, recomputed: bytes | None) -> None:
        hashes = tuple(dict.fromkeys(h for h in (stored, recomputed) if h is not None))
        if not hashes:
            self.recent.pop(seq, None)
            return
        self.recent[seq] = hashes
        self.recent.move_to_end(seq)
        while len(self.recent) > VERIFY_WINDOW_ENTRIES:
            self.recent.popitem(last=False)

    def check_head(self, seq: int, row: int, stored: bytes, recomputed: bytes | None) -> None:
        head = self.head
        if head is None or self.head_checked or seq != head.size:
            return
        if head.head in (stored, recomputed):
            self.head_checked = True
            self.report.anchored_size = head.size
            return
        if seq != row:
            # An entry stored elsewhere claims to be entry head.size (its body was altered, and
            # that is reported where it is): the genuine entry may still follow.
            return
        self.head_checked = True
        self.problem_always(
            "rewritten",
            head.size,
            f"entry {head.size} does not end in the head signed at {head.time_ms} ms: the chain up to it "
            f"was rebuilt (an entry at or before {head.size} was changed and the hashes recomputed)",
        )

    def problem_always(self, kind: str, seq: int, message: str) -> None:
        # Head-level findings are few and the most important; the cap is for per-entry damage.
        self.report.problems.append(Problem(kind, seq, message))

    def finish(self) -> VerifyReport:
        head = self.head
        if head is not None and not self.head_checked:
            if head.size == 0:
                if head.head == GENESIS:
                    self.report.anchored_size = 0
                else:
                    self.problem_always("rewritten", 0, "the signed head of an empty log is not GENESIS")
            elif self.last_row < head.size:
                first = self.last_row + 1
                self.problem_always(
                    "truncated",
                    first,
                    f"the log ends at entry {self.last_row} but the head signed at {head.time_ms} ms "
                    f"covers {head.size}: entries {first}..{head.size} were cut off",
                )
            # Otherwise entry head.size is missing or moved, which is reported where it happened.
        for prev_seq, waiting in self.deferred.items():
            if prev_seq <= self.last_row:
                continue  # the predecessor's place was deleted or holds another entry: reported there
            for w in waiting:
                self.problem(
                    "modified",
                    w.row,
                    f"entry {w.row} claims to be entry {prev_seq + 1}, beyond the end of the log "
                    f"({self.last_row} entries), so its hash cannot be checked: its body was altered "
                    "(or it was moved from a part of the log that is gone)",
                )
        return self.report


def _link(prevs: tuple[bytes, ...], body: bytes, stored: bytes) -> tuple[bool, bytes]:
    """Whether `stored` chains on one of `prevs`, and the hash recomputed on the first of them."""
    recomputed = chain_hash(prevs[0], body)
    if recomputed == stored:
        return True, recomputed
    return any(chain_hash(p, body) == stored for p in prevs[1:]), recomputed


def _altered_message(row: int, seq: int) -> str:
    return (
        f"entry {row} was altered: its stored hash does not match its body chained on entry {seq - 1} "
        "(the body or the hash was changed)"
    )


def verify_log(
    entries: Iterable[StoredEntry],
    head: SignedHead | None,
    *,
    trusted_public_key: bytes | None = None,
    problems_max: int = 100,
    resume_from: tuple[int, bytes] | None = None,
) -> VerifyReport:
    """Checks a log, read once in stored order, and optionally its signed head.

    Every damaged place is named, up to problems_max entry problems: after one, checking goes on
    from the stored hash. Entries after head.size are checked but not anchored. Memory stays
    bounded (VERIFY_WINDOW_ENTRIES) whatever the length of the log.

    `resume_from` (seq, hash) checks only the entries after an entry checked before, which
    must have that hash: `entries` then starts after it (a node's bounded check at start).
    """
    if problems_max < 1:
        raise InvalidArgument(f"problems_max is {problems_max}; it must be at least 1")
    anchor: SignedHead | None = None
    verifier = _Verifier(None, problems_max)
    if resume_from is not None:
        seq, last_hash = resume_from
        if seq < 0 or len(last_hash) != HASH_BYTES:
            raise InvalidArgument(f"resume_from is entry {seq} with a {len(last_hash)}-byte hash")
        verifier.recent = collections.OrderedDict({seq: (last_hash,)})
        verifier.last_row = seq
    if head is not None:
        trusted = True
        if not head.signature_valid():
            trusted = False
            verifier.problem_always(
                "bad-signature",
                head.size,
                f"the signature of the head ({head.size} entries, signed at {head.time_ms} ms) does not "
                "verify with its public key: the head was forged or altered",
            )
        if trusted_public_key is not None and head.public_key != trusted_public_key:
            trusted = False
            verifier.problem_always(
                "untrusted-key",
                head.size,
                f"the head is signed by key {head.public_key.hex()[:16]}..., not by the node's trusted key "
                f"{trusted_public_key.hex()[:16]}...",
            )
        if trusted:
            anchor = head
    verifier.head = anchor
    for entry in entries:
        verifier.add(entry)
    return verifier.finish()
