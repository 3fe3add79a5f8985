"""put / get / delete / scan / status against the stand-in servers of test_client_wire:
output formats, exit codes and error reporting."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest

from domicile.causality import CausalContext
from domicile.cli.main import main
from domicile.cli.output import table
from domicile.client import context_token
from domicile.v1 import coordinator_pb2 as cpb
from tests.unit.test_client_wire import FakeCluster


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        fake.stop()


def run(capsys, fake: FakeCluster, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--coordinator", fake.coordinator_address, "--deadline", "5"])
    out, err = capsys.readouterr()
    return code, out, err


def test_put_then_get_prints_the_value(capsys, cluster):
    code, out, _ = run(capsys, cluster, "put", "-n", "instruments", "-k", "AAPL", "-v", "apple")
    assert code == 0
    assert out.startswith("written instruments/AAPL region=us-east-1 dot=us-east-1:1 lsn=1 context=")
    code, out, _ = run(capsys, cluster, "get", "-n", "instruments", "-k", "AAPL")
    assert (code, out) == (0, "apple\n")


def test_get_exit_codes(capsys, cluster):
    assert run(capsys, cluster, "get", "-n", "instruments", "-k", "missing")[0] == 1
    code, _, err = run(capsys, cluster, "get", "-n", "nope", "-k", "k")
    assert code == 2
    assert err == "error: unknown namespace 'nope'\n"


def test_siblings_print_one_per_line_with_their_dot(capsys, cluster):
    run(capsys, cluster, "put", "-n", "instruments", "-k", "k", "-v", "a")
    run(capsys, cluster, "put", "-n", "instruments", "-k", "k", "-v", "b")
    code, out, _ = run(capsys, cluster, "get", "-n", "instruments", "-k", "k")
    assert (code, out) == (0, "us-east-1:1\ta\nus-east-1:2\tb\n")


def test_get_json_carries_versions_and_a_context_that_put_accepts(capsys, cluster):
    run(capsys, cluster, "put", "-n", "instruments", "-k", "k", "-v", "a")
    run(capsys, cluster, "put", "-n", "instruments", "-k", "k", "-v", "b")
    code, out, _ = run(capsys, cluster, "get", "-n", "instruments", "-k", "k", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["found"] and doc["region"] == "us-east-1"
    assert [v["value"] for v in doc["versions"]] == ["a", "b"]
    assert [v["dot"] for v in doc["versions"]] == ["us-east-1:1", "us-east-1:2"]
    code, _, _ = run(
        capsys, cluster, "put", "-n", "instruments", "-k", "k", "-v", "ab", "--context", doc["context"]
    )
    assert code == 0
    assert run(capsys, cluster, "get", "-n", "instruments", "-k", "k")[1] == "ab\n"


def test_a_plain_context_from_an_older_cli_is_refused(capsys, cluster):
    run(capsys, cluster, "put", "-n", "instruments", "-k", "k", "-v", "a")
    plain = context_token(CausalContext.of({"us-east-1": 1}))
    for command in ("put", "delete"):
        args = [command, "-n", "instruments", "-k", "k", "--context", plain]
        code, _, err = run(capsys, cluster, *args, *(["-v", "b"] if command == "put" else []))
        assert code == 2 and "plain context" in err and "no longer accepted" in err, err
    assert run(capsys, cluster, "get", "-n", "instruments", "-k", "k")[1] == "a\n"


def test_binary_values_survive(capsys, tmp_path, cluster):
    blob = tmp_path / "blob"
    blob.write_bytes(b"\x00\xff\x10")
    assert run(capsys, cluster, "put", "-n", "instruments", "-k", "b", "--value-file", str(blob))[0] == 0
    _, out, _ = run(capsys, cluster, "get", "-n", "instruments", "-k", "b", "--json")
    version = json.loads(out)["versions"][0]
    assert version["value"] is None and version["value_base64"] == "AP8Q"


def test_a_missing_value_file_is_an_error(capsys, tmp_path, cluster):
    code, _, err = run(
        capsys, cluster, "put", "-n", "instruments", "-k", "b", "--value-file", str(tmp_path / "x")
    )
    assert code == 2 and "cannot read --value-file" in err


def test_a_refused_placement_names_the_allowed_regions(capsys, cluster):
    code, out, err = run(
        capsys, cluster, "put", "-n", "customers_eu", "-k", "c1", "-v", "x", "--region", "us-east-1"
    )
    assert code == 2 and out == ""
    assert err.startswith("error: namespace customers_eu may only be held in: eu-west-1, eu-central-1")
    assert err.endswith("allowed regions: eu-west-1, eu-central-1\n")


def test_delete_and_scan(capsys, cluster):
    for key in ("a1", "a2", "a3", "b1"):
        run(capsys, cluster, "put", "-n", "instruments", "-k", key, "-v", key.upper())
    code, out, _ = run(capsys, cluster, "scan", "-n", "instruments", "--prefix", "a")
    assert (code, out) == (0, "a1\tA1\na2\tA2\na3\tA3\n")
    code, out, _ = run(capsys, cluster, "scan", "-n", "instruments", "--limit", "2", "--json")
    assert [json.loads(line)["key"] for line in out.splitlines()] == ["a1", "a2"]
    code, out, _ = run(capsys, cluster, "delete", "-n", "instruments", "-k", "a1")
    assert code == 0 and "existed=true" in out
    code, out, _ = run(capsys, cluster, "delete", "-n", "instruments", "-k", "a1", "--json")
    assert code == 0 and json.loads(out)["existed"] is False
    assert run(capsys, cluster, "get", "-n", "instruments", "-k", "a1")[0] == 1


def test_status_shows_every_node_and_marks_the_silent_ones_unreachable(capsys, cluster):
    cluster.add_dead_node("eu-central-1", "eu-central-1-b")
    cluster.set_health("us-east-1", cpb.NODE_HEALTH_DOWN)
    cluster.coordinator.topology.links.add(
        source_node_id="eu-west-1", target_node_id="eu-central-1", namespaces=["customers_eu"]
    )
    code, out, _ = run(capsys, cluster, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"coordinator {cluster.coordinator_address}: topology revision 1, policy p1")
    rows = {tuple(line.split()[:3]) for line in lines}
    assert ("us-east-1", "us-east-1", "down") in rows
    assert ("eu-west-1", "eu-west-1", "up") in rows
    assert ("eu-central-1", "eu-central-1-b", "unreachable") in rows
    assert any(line.startswith("eu-west-1 -> eu-central-1") for line in lines)

    code, out, _ = run(capsys, cluster, "status", "--json")
    doc = json.loads(out)
    health = {n["node_id"]: (n["health"], n["reachable"]) for n in doc["nodes"]}
    assert health["eu-west-1"] == ("up", True)
    assert health["eu-central-1-b"] == ("unreachable", False)
    assert doc["regions"] == ["us-east-1", "eu-west-1", "eu-central-1"]
    assert doc["links"][0]["source_node_id"] == "eu-west-1"


def test_status_without_a_coordinator_is_an_error_not_a_crash(capsys):
    code = main(["status", "--coordinator", "127.0.0.1:1", "--deadline", "1"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: coordinator at 127.0.0.1:1")


def test_server_errors_are_reported_and_exit_2(capsys, cluster):
    cluster.nodes["us-east-1"].failures = [grpc.StatusCode.DATA_LOSS]
    code, _, err = run(capsys, cluster, "get", "-n", "instruments", "-k", "k")
    assert (code, err) == (2, "error: injected DATA_LOSS\n")


def test_table_aligns_columns():
    assert table(["a", "bb"], [["xxx", 1], ["y", 22]]) == "A    BB\nxxx  1\ny    22"
