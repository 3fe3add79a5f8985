"""Ports for daemons that restart on their address (bench.procs.stable_port): outside the
kernel's ephemeral range, where no outgoing connection can take one while its daemon is down.
Found in a torture run: a node killed for a rewind could not listen again, its free_port()
number having been taken meanwhile ("address already in use")."""

from __future__ import annotations

import random
import socket

from bench.procs import ephemeral_range, free_port, stable_port


def test_a_stable_port_is_free_and_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    rng = random.Random(7)
    for _ in range(20):
        port = stable_port(rng)
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_free_port_is_inside_the_ephemeral_range() -> None:
    # Negative control: what the daemons listened on before, any outgoing connection's port.
    low, high = ephemeral_range()
    assert low <= free_port() <= high


def test_a_port_in_use_is_not_handed_out() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]

        class Fixed(random.Random):
            calls = 0

            def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:  # type: ignore[override]
                self.calls += 1
                return (
                    taken
                    if self.calls == 1
                    else super().randrange(start, stop if stop is not None else start)
                )

        assert stable_port(Fixed(1)) != taken
