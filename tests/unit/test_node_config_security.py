"""The node's security options: the clock drift bound, the context key file, and the choice
between mutual TLS and an explicit plaintext port."""

from __future__ import annotations

import pytest

from domicile.errors import InvalidArgument
from node.config import NodeConfig, parse_args


def test_defaults() -> None:
    config = NodeConfig(region="eu-west-1", insecure=True)
    assert config.max_clock_drift_ms == 5000
    assert config.context_key_file == ""


def test_a_config_with_neither_tls_files_nor_insecure_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidArgument, match="no TLS files for node eu-west-1"):
        NodeConfig(region="eu-west-1")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--region", "eu-west-1", "--max-clock-drift-ms", "250"])
    assert exited.value.code == 2
    assert "no TLS files for node eu-west-1" in capsys.readouterr().err


def test_flags_set_the_drift_bound_and_the_key_file() -> None:
    config = parse_args(
        [
            "--region",
            "eu-west-1",
            "--insecure",
            "--max-clock-drift-ms",
            "250",
            "--context-key-file",
            "keys/context.key",
        ]
    )
    assert config.max_clock_drift_ms == 250
    assert config.context_key_file == "keys/context.key"


@pytest.mark.parametrize("drift", [0, -1, 3_600_001])
def test_a_drift_bound_out_of_range_is_refused(drift: int) -> None:
    with pytest.raises(InvalidArgument, match="max_clock_drift_ms must be 1 to 3600000 milliseconds"):
        NodeConfig(region="eu-west-1", max_clock_drift_ms=drift, insecure=True)
