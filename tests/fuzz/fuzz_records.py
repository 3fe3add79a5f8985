"""Fuzzes the record codec (domicile/wire/records.py): protobuf bytes -> KeyState, Mutation,
RecordVersion, CausalContext and the SDK's read and write results, and back.

The first byte picks the target, the rest is the message. Oracle: only a DomicileError may
escape, and whatever decodes encodes back to bytes that decode to the same value.

KeyState and Mutation bytes are what the store and the change log hold, and the codec's own
functions take the bytes, so a protobuf DecodeError escaping them is a crash. The other targets
take messages gRPC has already parsed; bytes that do not parse never reach them.

    python tests/fuzz/fuzz_records.py [-runs=N] [libFuzzer flags] corpus_dir...
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["domicile"]):
    from google.protobuf.message import DecodeError, Message

    from domicile.errors import DomicileError
    from domicile.model import Limits
    from domicile.v1 import record_pb2 as pb
    from domicile.v1 import storage_node_pb2 as spb
    from domicile.wire import records

LIMITS = Limits()


def same(what: str, first: object, again: object) -> None:
    if first != again:
        raise AssertionError(f"{what} does not survive a round trip:\n  {first!r}\n  {again!r}")


def key_state(data: bytes) -> None:
    state = records.key_state_from_bytes(data)
    same("KeyState", state, records.key_state_from_bytes(records.key_state_to_bytes(state)))


def mutation(data: bytes) -> None:
    m = records.mutation_from_bytes(data)
    same("Mutation", m, records.mutation_from_bytes(records.mutation_to_bytes(m)))


def parsed(cls: type[Message], data: bytes) -> Message | None:
    try:
        return cls.FromString(data)
    except DecodeError:
        return None


def version(data: bytes) -> None:
    msg = parsed(pb.RecordVersion, data)
    if msg is None:
        return
    v = records.version_from_pb(msg)  # type: ignore[arg-type]
    again = pb.RecordVersion.FromString(records.version_to_pb(v).SerializeToString())
    same("RecordVersion", v, records.version_from_pb(again))


def context(data: bytes) -> None:
    msg = parsed(pb.CausalContext, data)
    if msg is None:
        return
    ctx = records.context_from_pb(msg, LIMITS)  # type: ignore[arg-type]
    if len(ctx.vv) + len(ctx.dots) > LIMITS.context_entries_max:
        raise AssertionError(f"a context of {len(ctx.vv) + len(ctx.dots)} entries was accepted")
    again = pb.CausalContext.FromString(records.context_to_pb(ctx).SerializeToString())
    same("CausalContext", ctx, records.context_from_pb(again, LIMITS))


def put_result(data: bytes) -> None:
    msg = parsed(spb.PutResponse, data)
    if msg is not None:
        records.put_result_from_pb(msg, "eu-west-1")  # type: ignore[arg-type]


def get_result(data: bytes) -> None:
    msg = parsed(spb.GetResponse, data)
    if msg is not None:
        result = records.get_result_from_pb(msg, "eu-west-1", "node n1")  # type: ignore[arg-type]
        for v in result.versions:
            # A result the SDK returns has every unredacted, checksummed value checked.
            if v.checksum and "value" not in v.redacted_fields and not v.checksum_ok():
                raise AssertionError(f"version {v.dot} with a bad checksum was returned")


def delete_result(data: bytes) -> None:
    msg = parsed(spb.DeleteResponse, data)
    if msg is not None:
        records.delete_result_from_pb(msg, "eu-west-1")  # type: ignore[arg-type]


def scan_items(data: bytes) -> None:
    msg = parsed(spb.ScanResponse, data)
    if msg is not None:
        records.scan_items_from_pb(msg, "node n1")  # type: ignore[arg-type]


TARGETS: tuple[Callable[[bytes], None], ...] = (
    key_state,
    mutation,
    version,
    context,
    put_result,
    get_result,
    delete_result,
    scan_items,
)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    with contextlib.suppress(DomicileError):
        TARGETS[data[0] % len(TARGETS)](data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
