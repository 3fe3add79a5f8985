"""Conversions between the domain types of domicile.causality and their protobuf form.

The protobuf form is also the storage form of versions, key states and change-log entries, so
that a change-log entry is shipped to replicas without re-encoding.
"""

from __future__ import annotations

from domicile.causality import CausalContext, Dot, KeyState, Mutation, Version
from domicile.errors import InvalidArgument
from domicile.model import Classification, Limits
from domicile.v1 import record_pb2 as pb


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


def mutation_from_pb(msg: pb.Mutation) -> Mutation:
    return Mutation(
        namespace=msg.namespace,
        key=msg.key,
        context=context_from_pb(msg.context),
        version=version_from_pb(msg.version),
        lsn=msg.lsn,
        origin_node_id=msg.origin_node_id,
    )


def key_state_to_bytes(state: KeyState) -> bytes:
    msg = pb.KeyState()
    for v in state.versions:
        version_to_pb(v, msg.versions.add())
    context_to_pb(state.context, msg.context)
    return msg.SerializeToString(deterministic=True)


def key_state_from_bytes(data: bytes) -> KeyState:
    msg = pb.KeyState.FromString(data)
    return KeyState(tuple(version_from_pb(v) for v in msg.versions), context_from_pb(msg.context))


def mutation_to_bytes(m: Mutation) -> bytes:
    return mutation_to_pb(m).SerializeToString(deterministic=True)


def mutation_from_bytes(data: bytes) -> Mutation:
    return mutation_from_pb(pb.Mutation.FromString(data))
