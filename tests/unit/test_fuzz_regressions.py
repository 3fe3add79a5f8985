"""Inputs the fuzz harnesses (tests/fuzz) found that crashed a loader or a decoder with an
exception other than a domain error, each minimized. Every one must now be refused with a
DomicileError that says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from domicile.errors import DataCorruption
from domicile.wire import records


def written(tmp_path: Path, data: bytes, name: str = "input.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- the record codec (fuzz_records) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("decode", "what"),
    [(records.key_state_from_bytes, "key state"), (records.mutation_from_bytes, "change-log entry")],
)
def test_stored_bytes_that_are_no_message_are_data_corruption(decode, what) -> None:
    # Was google.protobuf DecodeError: the codec's own functions take the stored bytes.
    with pytest.raises(DataCorruption, match=f"stored {what} is not a valid"):
        decode(b"\xff")
