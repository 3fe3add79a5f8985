"""The node's security options: the clock drift bound and the context key file."""

from __future__ import annotations

import pytest

from domicile.errors import InvalidArgument
from node.config import NodeConfig, parse_args


def test_defaults() -> None:
    config = NodeConfig(region="eu-west-1")
    assert config.max_clock_drift_ms == 5000
    assert config.context_key_file == ""


def test_flags_set_the_drift_bound_and_the_key_file() -> None:
    config = parse_args(
        ["--region", "eu-west-1", "--max-clock-drift-ms", "250", "--context-key-file", "keys/context.key"]
    )
    assert config.max_clock_drift_ms == 250
    assert config.context_key_file == "keys/context.key"


@pytest.mark.parametrize("drift", [0, -1, 3_600_001])
def test_a_drift_bound_out_of_range_is_refused(drift: int) -> None:
    with pytest.raises(InvalidArgument, match="max_clock_drift_ms must be 1 to 3600000 milliseconds"):
        NodeConfig(region="eu-west-1", max_clock_drift_ms=drift)
