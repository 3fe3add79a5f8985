"""The check a restore makes on every key state of a snapshot, without building domicile types.

A restore writes a snapshot's state bytes into the store as they are (they are already the
store's row format), so it needs only the fields the store indexes (whether a version is
live, the data subjects, the classifications) and the proof that every value is intact. The
protobuf parser (C) reads them; converting each state to domicile.causality types and back,
which cost a restore most of its time, is not needed for that. A state that does not parse or
whose value does not match its sha256 is damaged: the restore stops there. The same shapes
are refused as when the store reads a state (node.engine.core.decode_state): an unknown
classification, a causal context with a node id empty or too long, or a counter out of range.
"""

from __future__ import annotations

from hashlib import sha256
from typing import NamedTuple

from google.protobuf.message import DecodeError

from domicile.errors import DataCorruption
from domicile.model import Classification
from domicile.v1 import record_pb2 as pb

_CLASSIFICATIONS = frozenset(int(c) for c in Classification)
_COUNTER_LIMIT = 1 << 62
# A version vector's node ids are at most this long (domicile.wire.records context_from_pb).
_NODE_ID_CHARS_MAX = 63


class IndexFields(NamedTuple):
    """What the store keeps beside a key state's bytes (node.engine.backend.StateRow)."""

    live: bool
    subjects: tuple[str, ...]
    classifications: tuple[int, ...]


def checked_index_fields(namespace: str, key: str, blob: bytes) -> IndexFields:
    """The index fields of a stored key state, after checking every version's value against
    its sha256; DataCorruption names the key when the state is damaged. (Written for speed: a
    restore calls it once per key.)"""
    try:
        state = pb.KeyState.FromString(blob)
    except DecodeError as error:
        raise DataCorruption(f"backed-up state of {namespace}/{key} cannot be decoded ({error})") from None
    vv = state.context.version_vector
    for node in vv:
        if not node or len(node) > _NODE_ID_CHARS_MAX or not 0 < vv[node] < _COUNTER_LIMIT:
            raise _malformed_context(namespace, key)
    for dot in state.context.dots:
        if not dot.node_id or not 0 < dot.counter < _COUNTER_LIMIT:
            raise _malformed_context(namespace, key)
    live = False
    subjects: set[str] = set()
    classifications: set[int] = set()
    for version in state.versions:
        if sha256(version.value).digest() != version.checksum_sha256:
            raise DataCorruption(
                f"backed-up value of {namespace}/{key} (version {version.dot.node_id}:"
                f"{version.dot.counter}) failed its sha256 checksum; the backup is damaged"
            )
        if not version.tombstone:
            live = True
        subject = version.subject_id
        if subject:
            subjects.add(subject)
        classification = version.classification
        if classification not in _CLASSIFICATIONS:
            raise DataCorruption(
                f"backed-up state of {namespace}/{key} has an unknown classification {classification}"
            )
        classifications.add(classification)
    return IndexFields(live, tuple(sorted(subjects)), tuple(sorted(classifications)))


def _malformed_context(namespace: str, key: str) -> DataCorruption:
    return DataCorruption(
        f"backed-up state of {namespace}/{key} has a malformed causal context (a node id empty or "
        f"longer than {_NODE_ID_CHARS_MAX} characters, or a counter outside 1 to 2^62-1)"
    )
