"""A batch's replicate_send entry: grouped by namespace, rule and policy version, it names the
positions it covers and their digest, so the per-record entries can be derived and checked."""

from __future__ import annotations

from domicile.audit import TEXT_CHARS_MAX
from node.replication.send_audit import RANGES_PER_ENTRY_MAX, SentBatch, batch_digest, parse, verify


def test_one_entry_per_namespace_rule_and_policy_version_naming_its_positions() -> None:
    sent = SentBatch("eu-central-1")
    for lsn in range(10, 20):
        sent.add("instruments", "public-anywhere", "v1", lsn, f"k{lsn}")
    sent.add("prefs", "internal-eu", "v1", 20, "p20")
    sent.add("instruments", "public-anywhere", "v1", 21, "k21")
    entries = list(sent.entries())
    assert [(ns, rule, version) for ns, rule, version, _ in entries] == [
        ("instruments", "public-anywhere", "v1"),
        ("prefs", "internal-eu", "v1"),
    ]
    batch = parse(entries[0][3])
    assert batch is not None
    assert batch.target == "eu-central-1" and batch.records == 11
    assert batch.ranges == ((10, 19), (21, 21))
    assert entries[0][3] == (f"to=eu-central-1 batch records=11 lsns=10-19,21 sha256={batch.digest}")
    derived = [(lsn, f"k{lsn}") for lsn in batch.lsns()]
    assert verify(batch, derived) == ""


def test_a_record_that_does_not_match_the_entry_is_told_apart() -> None:
    sent = SentBatch("t")
    for lsn in (1, 2, 3):
        sent.add("ns", "r", "v", lsn, f"k{lsn}")
    ((_, _, _, detail),) = sent.entries()
    batch = parse(detail)
    assert batch is not None
    good = [(1, "k1"), (2, "k2"), (3, "k3")]
    assert verify(batch, good) == ""
    # Negative controls: another key, a missing record, an extra one.
    assert "sha256" in verify(batch, [(1, "k1"), (2, "other"), (3, "k3")])
    assert "positions 1-2" in verify(batch, good[:2])
    assert "positions" in verify(batch, [*good, (4, "k4")])


def test_the_digest_cannot_be_matched_by_moving_bytes_between_keys() -> None:
    assert batch_digest([(1, "ab"), (2, "c")]) != batch_digest([(1, "a"), (2, "bc")])
    assert batch_digest([(1, "a:2:b")]) != batch_digest([(1, "a"), (2, "b")])


def test_interleaved_positions_split_into_entries_within_the_text_limit() -> None:
    sent = SentBatch("n" * 63)
    lsns = [2 * i + 10**18 for i in range(3 * RANGES_PER_ENTRY_MAX + 1)]  # no two adjacent
    for lsn in lsns:
        sent.add("ns", "r", "v", lsn, f"k{lsn}")
    entries = list(sent.entries())
    assert len(entries) == 4
    covered: list[int] = []
    for _, _, _, detail in entries:
        assert len(detail) <= TEXT_CHARS_MAX
        batch = parse(detail)
        assert batch is not None and len(batch.ranges) <= RANGES_PER_ENTRY_MAX
        assert verify(batch, [(lsn, f"k{lsn}") for lsn in batch.lsns()]) == ""
        covered.extend(batch.lsns())
    assert covered == lsns


def test_a_per_record_detail_is_not_a_batch_entry() -> None:
    assert parse("to=eu-central-1 lsn=12") is None
    assert parse("to=x batch records=two lsns=1 sha256=00") is None
    assert parse("") is None
