"""`domicile audit verify` and `domicile audit tail` against the stand-in servers of
test_client_wire, whose nodes hold real signed audit chains: the result and every problem kind
a tampered log shows, exit codes (0 intact and anchored, 1 a problem or not anchored, 2 error),
progress on stderr, and the decoded tail."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.audit import ClosedChain, StoredEntry
from domicile.cli import audit as audit_cli
from domicile.cli.main import main
from domicile.cli.output import iso_ms
from tests.unit.test_client_wire import FakeCluster, audit_chain

REGION = "eu-west-1"


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        fake.stop()


def run(capsys, fake: FakeCluster, *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv, "--coordinator", fake.coordinator_address, "--deadline", "5"])
    out, err = capsys.readouterr()
    return code, out, err


def verify_json(capsys, fake: FakeCluster, region: str = REGION) -> tuple[int, dict]:
    code, out, _ = run(capsys, fake, "verify", "--region", region, "--json")
    return code, json.loads(out)


def kinds(doc: dict) -> list[str]:
    return [p["kind"] for p in doc["problems"]]


# -- verify


def test_an_intact_anchored_log_verifies(capsys, cluster):
    cluster.give_audit_log(REGION, 40, exported=30, accepted_unix_ms=1_790_000_100_000)
    code, out, err = run(capsys, cluster, "verify", "--region", REGION)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"audit log of {REGION}"
    assert "entries checked:  40" in lines
    anchored = next(line for line in lines if line.startswith("anchored:"))
    assert "30 of 30 entries covered by the head signed by eu-west-1 at " in anchored
    assert iso_ms(1_790_000_100_000) in anchored
    assert "node reports:     40 entries" in lines
    assert lines[-1] == "result:           ok"


def test_verify_json_shape(capsys, cluster):
    cluster.give_audit_log(REGION, 12, exported=12)
    code, doc = verify_json(capsys, cluster)
    assert code == 0
    assert doc["verified"] and doc["ok"] and doc["anchored"]
    assert (doc["entries_checked"], doc["anchored_size"], doc["node_head_size"]) == (12, 12, 12)
    assert doc["problems"] == [] and doc["problems_omitted"] == 0
    head = doc["head"]
    assert head["size"] == 12 and head["region"] == REGION and len(bytes.fromhex(head["head"])) == 32
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", head["time"])
    assert head["accepted_unix_ms"] > 0


def test_a_log_without_an_exported_head_is_not_anchored_exit_1(capsys, cluster):
    cluster.give_audit_log(REGION, 5)
    code, out, _ = run(capsys, cluster, "verify", "--region", REGION)
    assert code == 1
    assert "not anchored: the coordinator holds no exported audit head for eu-west-1" in out
    assert out.splitlines()[-1] == "result:           not anchored (no problem in the chain itself)"
    code, doc = verify_json(capsys, cluster)
    assert code == 1 and doc["anchored"] is False and doc["ok"] is True and doc["verified"] is False
    assert doc["head"] is None and doc["anchored_size"] == 0


def _flip(entry: StoredEntry) -> StoredEntry:
    body = bytearray(entry.body)
    body[-5] ^= 0x01
    return dataclasses.replace(entry, body=bytes(body))


def test_a_flipped_byte_is_modified(capsys, cluster):
    cluster.give_audit_log(REGION, 20, exported=20)
    log = cluster.nodes[REGION].audit_log
    log[6] = _flip(log[6])
    code, doc = verify_json(capsys, cluster)
    assert code == 1 and not doc["ok"]
    assert "modified" in kinds(doc)
    assert {p["seq"] for p in doc["problems"] if p["kind"] == "modified"} == {7}


def test_a_deleted_entry_is_missing(capsys, cluster):
    cluster.give_audit_log(REGION, 20, exported=20)
    del cluster.nodes[REGION].audit_log[9]
    code, out, _ = run(capsys, cluster, "verify", "--region", REGION)
    assert code == 1
    assert re.search(r"^missing\s+10\s+entry 10 is missing", out, re.MULTILINE)
    assert out.splitlines()[-1].startswith("result:           FAILED: ")


def test_swapped_entries_are_reordered(capsys, cluster):
    cluster.give_audit_log(REGION, 20, exported=20)
    log = cluster.nodes[REGION].audit_log
    a, b = log[4], log[5]
    log[4], log[5] = StoredEntry(5, b.body, b.hash), StoredEntry(6, a.body, a.hash)
    code, doc = verify_json(capsys, cluster)
    assert code == 1 and "reordered" in kinds(doc)


def test_a_cut_tail_is_truncated(capsys, cluster):
    _, key = cluster.give_audit_log(REGION, 20, exported=20)
    node = cluster.nodes[REGION]
    # The node lost its last five entries and now signs a shorter head; the exported one stands.
    node.audit_log, node.audit_head = audit_chain(REGION, 15, key)
    code, doc = verify_json(capsys, cluster)
    assert code == 1
    assert kinds(doc) == ["truncated"] and doc["problems"][0]["seq"] == 16
    assert doc["node_head_size"] == 15


def test_a_rebuilt_chain_is_rewritten(capsys, cluster):
    cluster.give_audit_log(REGION, 20, exported=20)
    key = Ed25519PrivateKey.generate()
    # Every entry re-chained from a different log: internally consistent, not what was exported.
    rebuilt, head = audit_chain(REGION, 20, key, time_ms=1_700_000_000_000)
    node = cluster.nodes[REGION]
    node.audit_log, node.audit_head = rebuilt, head
    code, doc = verify_json(capsys, cluster)
    assert code == 1 and kinds(doc) == ["rewritten"] and doc["anchored_size"] == 0


def test_a_forged_head_signature_is_reported(capsys, cluster):
    cluster.give_audit_log(REGION, 10, exported=10)
    head, accepted = cluster.coordinator.audit_heads[REGION]
    forged = dataclasses.replace(head, signature=bytes(64))
    cluster.coordinator.audit_heads[REGION] = (forged, accepted)
    code, doc = verify_json(capsys, cluster)
    assert code == 1 and kinds(doc) == ["bad-signature"] and doc["anchored_size"] == 0


def test_closed_chains_are_listed_and_leave_the_result_as_the_current_chain_gives_it(capsys, cluster):
    # The node was restored twice: two chains closed, the current one (incarnation 2) intact.
    _, key = cluster.give_audit_log(REGION, 12, exported=12, accepted_unix_ms=1_790_000_300_000)
    _, first = audit_chain(REGION, 40, key, time_ms=1_790_000_000_000)
    _, second = audit_chain(REGION, 7, key, time_ms=1_790_000_100_000)
    closed = [
        ClosedChain(first, 0, 1_790_000_050_000, 1_790_000_090_000),
        ClosedChain(second, 1, 1_790_000_150_000, 1_790_000_200_000),
    ]
    cluster.coordinator.audit_chains[REGION] = (2, closed)
    code, out, _ = run(capsys, cluster, "verify", "--region", REGION)
    assert code == 0
    lines = out.splitlines()
    start = lines.index(
        "incarnation:      2; 2 earlier chains closed by a restore or a store put back from an older "
        "copy (their later entries are not in this log):"
    )
    assert lines[start + 1 : start + 3] == [
        f"  incarnation 0: 40 entries, last head signed at {iso_ms(1_790_000_000_040)}, "
        f"closed at {iso_ms(1_790_000_090_000)}",
        f"  incarnation 1: 7 entries, last head signed at {iso_ms(1_790_000_100_007)}, "
        f"closed at {iso_ms(1_790_000_200_000)}",
    ]
    assert lines[-1] == "result:           ok"
    code, doc = verify_json(capsys, cluster)
    assert code == 0 and doc["verified"] and doc["incarnation"] == 2
    assert [(c["incarnation"], c["head"]["size"], c["closed_unix_ms"]) for c in doc["closed_chains"]] == [
        (0, 40, 1_790_000_090_000),
        (1, 7, 1_790_000_200_000),
    ]
    assert doc["closed_chains"][0]["head"]["head"] == first.head.hex()
    assert doc["closed_chains"][1]["head"]["accepted_unix_ms"] == 1_790_000_150_000


def test_closed_chains_beyond_those_listed_are_counted(capsys, cluster):
    _, key = cluster.give_audit_log(REGION, 3, exported=3)
    _, last = audit_chain(REGION, 9, key)
    cluster.coordinator.audit_chains[REGION] = (120, [ClosedChain(last, 119, 1, 2)])
    cluster.coordinator.audit_chains_omitted[REGION] = 119
    code, out, _ = run(capsys, cluster, "verify", "--region", REGION)
    assert code == 0
    assert "incarnation:      120; 120 earlier chains closed by a restore" in out
    assert "  ... 119 older chains not listed" in out.splitlines()
    code, doc = verify_json(capsys, cluster)
    assert len(doc["closed_chains"]) == 1 and doc["closed_chains_omitted"] == 119


def test_a_first_chain_shows_no_incarnation_line(capsys, cluster):
    cluster.give_audit_log(REGION, 5, exported=5)
    code, out, _ = run(capsys, cluster, "verify", "--region", REGION)
    assert code == 0 and not [line for line in out.splitlines() if line.startswith("incarnation:")]
    code, doc = verify_json(capsys, cluster)
    assert (doc["incarnation"], doc["closed_chains"]) == (0, [])


def test_problems_beyond_the_maximum_are_counted(capsys, cluster):
    cluster.give_audit_log(REGION, 30, exported=30)
    log = cluster.nodes[REGION].audit_log
    for i in range(0, 30, 3):
        log[i] = _flip(log[i])
    code, out, _ = run(capsys, cluster, "verify", "--region", REGION, "--problems-max", "4")
    assert code == 1
    assert "... and 6 more not listed (raise --problems-max)" in out
    assert out.splitlines()[-1] == "result:           FAILED: 10 problems"


def test_progress_goes_to_stderr(capsys, cluster, monkeypatch):
    monkeypatch.setattr(audit_cli, "PROGRESS_EVERY_ENTRIES", 10)
    cluster.give_audit_log(REGION, 25, exported=25)
    code, out, err = run(capsys, cluster, "verify", "--region", REGION, "--json")
    assert code == 0 and json.loads(out)["verified"]
    assert err.splitlines() == [
        f"audit log of {REGION}: 10 entries read",
        f"audit log of {REGION}: 20 entries read",
    ]


def test_verify_errors_are_exit_2(capsys, cluster):
    code, out, err = run(capsys, cluster, "verify", "--region", "mars-1")
    assert (code, out) == (2, "")
    assert err.startswith("error: unknown region 'mars-1'; regions: us-east-1, eu-west-1, eu-central-1")
    cluster.coordinator.topology.nodes[1].address = "127.0.0.1:1"
    cluster.give_audit_log(REGION, 3, exported=3)
    code, _, err = run(capsys, cluster, "verify", "--region", REGION)
    assert code == 2 and err.startswith("error: node eu-west-1 (eu-west-1) at 127.0.0.1:1")


def test_verify_usage(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["audit", "verify"])
    assert raised.value.code == 2 and "--region" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["audit", "verify", "-r", REGION, "--problems-max", "0"])
    assert raised.value.code == 2 and "0 is outside 1..100000" in capsys.readouterr().err


# -- tail


def test_tail_prints_the_last_entries_decoded(capsys, cluster):
    cluster.give_audit_log(REGION, 30)
    code, out, err = run(capsys, cluster, "tail", "--region", REGION, "-n", "3")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "PRINCIPAL", "ACTION", "RECORD", "DECISION", "RULE", "DETAIL"]
    assert [line.split()[0] for line in lines[1:]] == ["28", "29", "30"]
    last = lines[-1].split()
    assert last[1:7] == [
        iso_ms(1_790_000_000_030),
        "client:ipv4:127.0.0.1:5000",
        "put",
        "customers_eu/c-30",
        "allow",
        "gdpr.home",
    ]
    assert lines[-1].endswith("entry 30")
    assert cluster.nodes[REGION].audit_requests[-1].tail


def test_tail_defaults_to_20_entries(capsys, cluster):
    cluster.give_audit_log(REGION, 30)
    code, out, _ = run(capsys, cluster, "tail", "--region", REGION)
    assert code == 0 and len(out.splitlines()) == 21
    assert cluster.nodes[REGION].audit_requests[-1].limit == 20


def test_tail_json(capsys, cluster):
    cluster.give_audit_log(REGION, 5)
    code, out, _ = run(capsys, cluster, "tail", "--region", REGION, "-n", "2", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["region"] == REGION and doc["node_head_size"] == 5
    assert [e["seq"] for e in doc["entries"]] == [4, 5]
    entry = doc["entries"][1]
    assert entry["action"] == "put" and entry["namespace"] == "customers_eu" and entry["key"] == "c-5"
    assert entry["decision"] == "allow" and entry["rule"] == "gdpr.home" and entry["policy_version"] == "p1"
    assert entry["time"] == iso_ms(entry["time_unix_ms"]) and len(bytes.fromhex(entry["hash"])) == 32


def test_tail_shows_an_undecodable_entry_and_goes_on(capsys, cluster):
    cluster.give_audit_log(REGION, 5)
    log = cluster.nodes[REGION].audit_log
    log[3] = dataclasses.replace(log[3], body=b"{not json")
    code, out, _ = run(capsys, cluster, "tail", "--region", REGION, "-n", "3")
    assert code == 0
    rows = out.splitlines()[1:]
    assert rows[1].split()[:4] == ["4", "-", "-", "?"] and "undecodable entry: " in rows[1]
    assert rows[2].split()[0] == "5"
    _, out, _ = run(capsys, cluster, "tail", "--region", REGION, "-n", "3", "--json")
    assert "error" in json.loads(out)["entries"][1]


def test_tail_of_an_empty_log(capsys, cluster):
    code, out, _ = run(capsys, cluster, "tail", "--region", "us-east-1")
    assert (code, out) == (0, "audit log of us-east-1 is empty\n")


@pytest.mark.parametrize("n", ["0", "10001", "x"])
def test_tail_count_is_bounded(capsys, n):
    with pytest.raises(SystemExit) as raised:
        main(["audit", "tail", "--region", REGION, "-n", n])
    assert raised.value.code == 2 and "argument -n" in capsys.readouterr().err
