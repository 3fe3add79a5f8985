"""Records on the wire: domicile.causality types <-> record.proto, and the SDK's read and write
results <-> the storage node's responses.

The protobuf form is also the storage form of versions, key states and change-log entries, so
that a change-log entry is shipped to replicas without re-encoding.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import fields
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from domicile.causality import CausalContext, Dot, KeyState, Mutation, RequestMark, Version
from domicile.errors import DataCorruption, InvalidArgument
from domicile.model import Classification, Limits
from domicile.results import DeleteResult, GetResult, PutResult, ReadVersion, ScanItem
from domicile.v1 import record_pb2 as pb
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.framing import frame, message_field_tag

_Stored = TypeVar("_Stored", bound=Message)


def context_to_pb(ctx: CausalContext, out: pb.CausalContext | None = None) -> pb.CausalContext:
    msg = out if out is not None else pb.CausalContext()
    for node, counter in ctx.vv.items():
        msg.version_vector[node] = counter
    for dot in sorted(ctx.dots):
        msg.dots.add(node_id=dot.node_id, counter=dot.counter)
    return msg


def context_from_pb(msg: pb.CausalContext, limits: Limits | None = None) -> CausalContext:
    """Decodes a context, refusing malformed ones with a message that says what is allowed."""
    entries = len(msg.version_vector) + len(msg.dots)
    if limits is not None and entries > limits.context_entries_max:
        raise InvalidArgument(
            f"malformed causal context: {entries} entries; at most {limits.context_entries_max} allowed"
        )
    for node, counter in msg.version_vector.items():
        if not node or len(node) > 63:
            raise InvalidArgument("malformed causal context: a node id is empty or longer than 63 characters")
        if counter == 0 or counter >= 1 << 62:
            raise InvalidArgument(
                f"malformed causal context: counter {counter} for node {node!r}; counters are 1 to 2^62-1"
            )
    for dot in msg.dots:
        if not dot.node_id or dot.counter == 0 or dot.counter >= 1 << 62:
            raise InvalidArgument(
                "malformed causal context: every dot needs a node id and a counter from 1 to 2^62-1"
            )
    return CausalContext.of(dict(msg.version_vector), (Dot(d.node_id, d.counter) for d in msg.dots))


def version_to_pb(v: Version, out: pb.RecordVersion | None = None) -> pb.RecordVersion:
    msg = out if out is not None else pb.RecordVersion()
    msg.dot.node_id = v.dot.node_id
    msg.dot.counter = v.dot.counter
    msg.value = v.value
    msg.content_type = v.content_type
    msg.tombstone = v.tombstone
    msg.hlc = v.hlc
    msg.subject_id = v.subject_id
    msg.subject_jurisdiction = v.subject_jurisdiction
    msg.classification = int(v.classification)  # type: ignore[assignment]
    msg.checksum_sha256 = v.checksum
    msg.origin_region = v.origin_region
    msg.request_id = v.request_id
    return msg


def version_from_pb(msg: pb.RecordVersion) -> Version:
    try:
        classification = Classification(msg.classification)
    except ValueError:
        raise InvalidArgument(f"unknown classification value {msg.classification}") from None
    return Version(
        dot=Dot(msg.dot.node_id, msg.dot.counter),
        value=msg.value,
        hlc=msg.hlc,
        tombstone=msg.tombstone,
        content_type=msg.content_type,
        subject_id=msg.subject_id,
        subject_jurisdiction=msg.subject_jurisdiction,
        classification=classification,
        checksum=msg.checksum_sha256,
        origin_region=msg.origin_region,
        request_id=msg.request_id,
    )


def mutation_to_pb(m: Mutation, out: pb.Mutation | None = None) -> pb.Mutation:
    msg = out if out is not None else pb.Mutation()
    msg.namespace = m.namespace
    msg.key = m.key
    context_to_pb(m.context, msg.context)
    version_to_pb(m.version, msg.version)
    msg.lsn = m.lsn
    msg.origin_node_id = m.origin_node_id
    return msg


def mutation_from_pb(msg: pb.Mutation, limits: Limits | None = None) -> Mutation:
    """`limits`: refuse a context with more entries than a client's may have (context_from_pb)."""
    return Mutation(
        namespace=msg.namespace,
        key=msg.key,
        context=context_from_pb(msg.context, limits),
        version=version_from_pb(msg.version),
        lsn=msg.lsn,
        origin_node_id=msg.origin_node_id,
    )


def key_state_to_bytes(state: KeyState, known: tuple[Version, pb.RecordVersion] | None = None) -> bytes:
    """`known`: a version of the state already in its protobuf form (the version a write just
    made, encoded for its change-log entry), copied instead of encoded again."""
    versions = state.versions
    if known is not None and len(versions) == 1 and versions[0] is known[0] and not state.requests:
        # The state most writes leave (a new key, or one write superseding every version):
        # its encoding put together from its two fields' (tag, length, bytes), as protobuf's
        # deterministic encoding writes them (in field order; an empty context is absent),
        # without copying the version into a KeyState message to encode it again.
        version = known[1].SerializeToString(deterministic=True)
        context = _context_bytes(state.context)
        head = frame(_KEY_STATE_VERSION_TAG, version)
        return head + frame(_KEY_STATE_CONTEXT_TAG, context) if context else head
    msg = pb.KeyState()
    for v in state.versions:
        if known is not None and v is known[0]:
            msg.versions.add().CopyFrom(known[1])
        else:
            version_to_pb(v, msg.versions.add())
    context_to_pb(state.context, msg.context)
    for mark in state.requests:
        out = msg.requests.add(
            request_id=mark.request_id,
            hlc=mark.hlc,
            lsn=mark.lsn,
            had_live=mark.had_live,
            partial=mark.partial,
            digest=mark.digest,
        )
        for dot in mark.dots:
            out.dots.add(node_id=dot.node_id, counter=dot.counter)
    return msg.SerializeToString(deterministic=True)


_KEY_STATE_VERSION_TAG = message_field_tag(pb.KeyState.DESCRIPTOR, "versions")
_KEY_STATE_CONTEXT_TAG = message_field_tag(pb.KeyState.DESCRIPTOR, "context")
# The last context encoded by _context_bytes: the engine gives every first write of a key the
# same context object, so a bulk load encodes it once.
_last_context: tuple[CausalContext, bytes] = (CausalContext.empty(), b"")


def _context_bytes(ctx: CausalContext) -> bytes:
    global _last_context
    last = _last_context
    if last[0] is ctx:
        return last[1]
    encoded = context_to_pb(ctx).SerializeToString(deterministic=True)
    _last_context = (ctx, encoded)
    return encoded


def _parse_stored(cls: type[_Stored], data: bytes, what: str) -> _Stored:
    """The stored form of `what`; bytes that are not one are damaged data, not a bug."""
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        raise DataCorruption(f"stored {what} is not a valid {cls.DESCRIPTOR.name} message: {exc}") from None


def key_state_from_bytes(data: bytes) -> KeyState:
    msg = _parse_stored(pb.KeyState, data, "key state")
    requests = tuple(
        RequestMark(
            m.request_id,
            tuple(Dot(d.node_id, d.counter) for d in m.dots),
            m.hlc,
            m.lsn,
            m.had_live,
            m.partial,
            m.digest,
        )
        for m in msg.requests
        if m.dots
    )
    return KeyState(tuple(version_from_pb(v) for v in msg.versions), context_from_pb(msg.context), requests)


def mutation_to_bytes(m: Mutation) -> bytes:
    return mutation_to_pb(m).SerializeToString(deterministic=True)


def mutation_from_bytes(data: bytes) -> Mutation:
    return mutation_from_pb(_parse_stored(pb.Mutation, data, "change-log entry"))


def context_token(context: CausalContext) -> str:
    """A compact text form of a causal context, for passing one through a shell or a form."""
    data = context_to_pb(context).SerializeToString(deterministic=True)
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def context_from_token(token: str, limits: Limits | None = None) -> CausalContext:
    """Parses context_token's output."""
    try:
        data = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        msg = pb.CausalContext.FromString(data)
    except (binascii.Error, ValueError, DecodeError):
        raise InvalidArgument(
            "malformed context token: pass the 'context' printed by an earlier get, put or delete"
        ) from None
    return context_from_pb(msg, limits or Limits())


_VERSION_FIELDS = tuple(f.name for f in fields(Version))


def read_version_from_pb(msg: pb.RecordVersion) -> ReadVersion:
    v = version_from_pb(msg)
    return ReadVersion(
        **{name: getattr(v, name) for name in _VERSION_FIELDS}, redacted_fields=tuple(msg.redacted_fields)
    )


def read_versions_from_pb(msgs: Sequence[pb.RecordVersion], where: str) -> tuple[ReadVersion, ...]:
    """The versions of a read, each checked against its checksum (`where` names the server)."""
    versions = tuple(read_version_from_pb(m) for m in msgs)
    for v in versions:
        # End to end: the node checks too, but a value can also be damaged on the way. A
        # redacted value is not there to check.
        if v.checksum and "value" not in v.redacted_fields and not v.checksum_ok():
            raise DataCorruption(
                f"{where}: version {v.dot.node_id}:{v.dot.counter} failed its sha256 checksum"
            )
    return versions


# `region` is the region of the node that answered: older nodes leave the field empty.


def put_result_from_pb(msg: spb.PutResponse, region: str) -> PutResult:
    return PutResult(
        version=version_from_pb(msg.version),
        context=context_from_pb(msg.context),
        lsn=msg.lsn,
        region=msg.region or region,
        context_token=msg.context_token,
    )


def get_result_from_pb(msg: spb.GetResponse, region: str, where: str) -> GetResult:
    return GetResult(
        found=msg.found,
        versions=read_versions_from_pb(msg.versions, where),
        context=context_from_pb(msg.context),
        region=msg.region or region,
        context_token=msg.context_token,
    )


def delete_result_from_pb(msg: spb.DeleteResponse, region: str) -> DeleteResult:
    return DeleteResult(
        existed=msg.existed,
        version=version_from_pb(msg.version),
        context=context_from_pb(msg.context),
        lsn=msg.lsn,
        region=region,
        context_token=msg.context_token,
    )


def scan_items_from_pb(msg: spb.ScanResponse, where: str) -> list[ScanItem]:
    return [
        ScanItem(i.key, read_versions_from_pb(i.versions, where), context_from_pb(i.context), i.context_token)
        for i in msg.items
    ]
