"""bench.machine: the shares of CPU time stolen and waited for, read from /proc."""

from __future__ import annotations

import pytest

from bench import machine
from bench.machine import Sample


def stat(user: int, idle: int, steal: int) -> tuple[int, ...]:
    # user nice system idle iowait irq softirq steal
    return (user, 0, 0, idle, 0, 0, 0, steal)


def test_shares_of_one_window() -> None:
    a = Sample(10.0, stat(100, 100, 10), 1_000_000)
    b = Sample(12.0, stat(160, 120, 30), 1_500_000)  # 60 busy, 20 idle, 20 stolen; 0.5 s waited of 2 s
    share = machine.between(a, b)
    assert share.steal == pytest.approx(0.2)
    assert share.busy == pytest.approx(0.6)
    assert share.pressure == pytest.approx(0.25)
    assert "stolen by the hypervisor 20.0%" in share.line()


def test_windows_are_summed_not_averaged() -> None:
    """A short window with much steal weighs by its length: 5 of 110 jiffies, not the mean of
    0% and 50%."""
    quiet = (Sample(0.0, stat(0, 0, 0), 0), Sample(1.0, stat(50, 50, 0), 0))
    stolen = (Sample(5.0, stat(0, 0, 0), 0), Sample(5.1, stat(5, 0, 5), 100_000))
    share = machine.total([quiet, stolen])
    assert share.steal == pytest.approx(5 / 110)
    assert share.pressure == pytest.approx(0.1 / 1.1)


def test_what_the_kernel_does_not_offer_is_none() -> None:
    share = machine.between(Sample(0.0, None, None), Sample(1.0, None, None))
    assert share == machine.Share(None, None, None)
    assert "n/a" in share.line()


def test_this_machine_is_sampled() -> None:
    a = machine.sample()
    sum(range(200_000))
    share = machine.between(a, machine.sample())
    assert a.jiffies is not None and len(a.jiffies) == machine.FIELDS
    assert share.busy is None or 0.0 <= share.busy <= 1.0
