"""The bodies and names of backup objects read back what was written, and refuse a cut body."""

from __future__ import annotations

import pytest

from domicile.backup import format as fmt


def test_snapshot_rows_and_log_entries_read_back_in_order() -> None:
    rows = [("ns", "k1", b"\x00state"), ("ns", "ключ", b""), ("other", "k", b"x" * 1000)]
    body = b"".join(fmt.frame_snapshot_row(*r) for r in rows)
    assert list(fmt.read_snapshot_rows(body)) == rows
    entries = [(7, b"m7"), (8, b""), (9, b"m9" * 50)]
    assert list(fmt.read_log_entries(b"".join(fmt.frame_log_entry(*e) for e in entries))) == entries


def test_a_cut_body_is_refused() -> None:
    body = fmt.frame_log_entry(1, b"mutation")
    with pytest.raises(ValueError, match="ends inside a record"):
        list(fmt.read_log_entries(body[:-1]))


def test_names_sort_by_time_and_segments_parse() -> None:
    early, late = (
        fmt.generation_name(1_700_000_000_001, "ffffffff"),
        fmt.generation_name(1_700_000_000_002, "00000000"),
    )
    assert early < late and fmt.GENERATION_PATTERN.fullmatch(early)
    key = fmt.segment_key("p/", "n1", early, 5, 12)
    assert fmt.parse_segment_name(key.rsplit("/", 1)[1]) == (5, 12)
    assert fmt.parse_segment_name("manifest.json") is None


def test_a_manifest_reads_back_and_another_format_is_refused() -> None:
    manifest = fmt.Manifest("n1", "eu-west-1", "g", 0, 1, 2, 3, 4, (fmt.SnapshotPart("k", "ab", 10, 2),))
    assert fmt.Manifest.from_json(manifest.to_json()) == manifest
    with pytest.raises(ValueError, match="manifest format 99"):
        fmt.Manifest.from_json(manifest.to_json().replace(b'"format": 1', b'"format": 99'))
