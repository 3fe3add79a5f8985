"""A coordinator state copy's name carries its UTC time, and restore --to T and retention read it
back. It was read with time.mktime(...) - time.timezone, local time with daylight saving time
applied against the offset without it: on a host on summer time every copy read one hour early,
so a restore "to T" took a copy made up to an hour after T (regression)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from coordinator.state_backup import _name, _time_of

# 2024-07-03T09:46:40.123Z (summer time in Berlin) and 2024-01-15T12:00:00.007Z (winter).
TIMES_MS = (1_720_000_000_123, 1_705_320_000_007)


@pytest.fixture(params=["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney"])
def zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("ms", TIMES_MS)
def test_a_copy_name_reads_back_as_its_utc_time_in_any_host_zone(zone: str, ms: int) -> None:
    assert _time_of(f"t-1/coordinator/{_name(ms)}") == ms, zone
