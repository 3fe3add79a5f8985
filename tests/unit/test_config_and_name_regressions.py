"""Regressions of the same two bugs the fuzzers found in the cluster config and the record names,
in the places they were not fuzzed: the node and coordinator config files (YAML that PyYAML
refuses with something other than YAMLError), and names checked with a pattern ending in `$`,
which also accepts the name with a final newline."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.addresses import split_host_port
from coordinator.config import load_config_file
from coordinator.subject_desk import check_hold_id, check_request_id
from domicile.errors import InvalidArgument, Unauthenticated
from domicile.identity import spiffe
from node.config import parse_args

# Each of these is refused by PyYAML with ValueError or RecursionError, not YAMLError.
BAD_YAML = {
    "impossible date": "listen: 2026-13-01\n",
    "huge integer": "listen: " + "9" * 5000 + "\n",
    "deep nesting": "listen: " + "[" * 2000 + "]" * 2000 + "\n",
}


@pytest.mark.parametrize("text", BAD_YAML.values(), ids=BAD_YAML.keys())
def test_a_coordinator_config_pyyaml_cannot_build_is_invalid_argument(tmp_path: Path, text: str) -> None:
    path = tmp_path / "coordinator.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match="is not valid YAML"):
        load_config_file(path)


def test_a_coordinator_config_that_is_not_utf8_is_invalid_argument(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.yaml"
    path.write_bytes(b"listen: \xff\xfe\n")
    with pytest.raises(InvalidArgument, match="UTF-8"):
        load_config_file(path)


@pytest.mark.parametrize("text", BAD_YAML.values(), ids=BAD_YAML.keys())
def test_a_node_config_pyyaml_cannot_build_is_a_usage_error(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--config", str(path), "--region", "eu-west-1", "--insecure"])
    assert exited.value.code == 2
    assert "is not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    "check, name",
    [
        (spiffe.check_region, "eu-west-1"),
        (spiffe.check_node_id, "n1"),
        (spiffe.check_client_name, "trading"),
        (spiffe.check_cluster, "domicile"),
    ],
)
def test_a_spiffe_name_with_a_final_newline_is_refused(check, name: str) -> None:
    assert check(name) == name
    with pytest.raises((InvalidArgument, Unauthenticated)):
        check(name + "\n")


def test_coordinator_ids_and_hosts_with_a_final_newline_are_refused() -> None:
    check_request_id("req-0123456789")
    check_hold_id("hold-0123456789")
    with pytest.raises(InvalidArgument):
        check_request_id("req-0123456789\n")
    with pytest.raises(InvalidArgument):
        check_hold_id("hold-0123456789\n")
    assert split_host_port("localhost:7400", "address") == ("localhost", 7400)
    with pytest.raises(InvalidArgument):
        split_host_port("localhost\n:7400", "address")
