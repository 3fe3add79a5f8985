"""Ports for servers whose address is chosen before they listen (domicile.ports): outside the
kernel's ephemeral range, where no outgoing connection can take one before its server binds.

Found twice: a torture node killed for a rewind could not listen again, its bind(0) number
taken meanwhile by an outgoing connection; and a test cluster's node could not listen at all,
its number taken between the check and the bind ("Failed to bind to address")."""

from __future__ import annotations

import random
import socket

import pytest

from domicile import ports
from domicile.ports import ephemeral_range, free_port, free_port_run


def outside_ephemeral(port: int) -> bool:
    low, high = ephemeral_range()
    return not low <= port <= high


def test_regression_a_free_port_is_free_and_outside_the_ephemeral_range() -> None:
    rng = random.Random(7)
    for _ in range(20):
        port = free_port(rng=rng)
        assert outside_ephemeral(port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_bind_zero_port_is_inside_the_ephemeral_range() -> None:
    # Negative control: what the servers listened on before, any outgoing connection's port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert not outside_ephemeral(s.getsockname()[1])


class Scripted(random.Random):
    """Returns the scripted numbers first, then random ones."""

    def __init__(self, *script: int) -> None:
        super().__init__(1)
        self.script = list(script)

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:  # type: ignore[override]
        if self.script:
            return self.script.pop(0)
        return super().randrange(start, stop if stop is not None else start)


def test_a_port_in_use_is_not_handed_out() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        taken = held.getsockname()[1]
        ports._handed_out.discard(taken)  # as if another process had bound it
        assert free_port(rng=Scripted(taken)) != taken


def test_a_port_is_handed_out_once_per_process() -> None:
    # Two servers given numbers before either listens must not get the same one.
    first = free_port()
    assert free_port(rng=Scripted(first)) != first


def test_a_run_of_ports_is_consecutive_free_and_not_handed_out_again() -> None:
    first = free_port_run(5, rng=random.Random(3))
    run = range(first, first + 5)
    assert all(outside_ephemeral(p) for p in run)
    for port in run:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    assert free_port(rng=Scripted(*run)) not in run


def test_no_free_port_is_an_error_naming_the_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "bindable", lambda host, port: False)
    with pytest.raises(OSError, match="no free port between"):
        free_port()


def test_regression_a_reserved_port_is_not_handed_out() -> None:
    # Found in a full test run: `domicile up --tiers` gave the S3 server's inner master a port among the
    # daemons' numbered ones (base port + i), which a daemon then could not bind.
    wanted = free_port()
    ports._handed_out.discard(wanted)
    assert free_port(rng=Scripted(wanted)) == wanted  # negative control: free, so handed out
    ports._handed_out.discard(wanted)
    ports.reserve([wanted])
    assert free_port(rng=Scripted(wanted)) != wanted


def test_the_candidate_range_follows_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    for ephemeral, expected in (
        ((32768, 60999), (10_000, 32768)),
        ((1024, 50000), (50001, 65536)),  # moved down: above it
        ((1024, 65535), (10_000, 65536)),  # no room either side: anywhere
    ):
        monkeypatch.setattr(ports, "ephemeral_range", lambda e=ephemeral: e)
        assert ports.candidate_range() == expected
