"""The HLC's early ceiling reservations run on one thread started once (node.clock_file.CeilingStorer),
not on a new thread per reservation: the reservation is handed over from inside the clock, on
whatever thread issued the timestamp (the event loop for an audit entry or a replicated apply),
and starting a thread there waits for the thread to start."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from domicile.hlc import HybridClock
from node.clock_file import CeilingStorer, load_ceiling, save_ceiling

STEP_MS = 1000


class FakeWall:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def storing_threads(tmp_path: Path, early: Callable[[Callable[[], None]], None], steps: int) -> set[int]:
    """Drives a persisted clock through `steps` reserve steps, each reserved early through
    `early`, and returns the threads the early stores ran on."""
    threads: set[int] = set()
    done = threading.Event()

    def reserve(ms: int) -> None:
        save_ceiling(tmp_path, ms)
        if threading.current_thread() is not threading.main_thread():
            threads.add(threading.get_ident())

    def early_then_done(store: Callable[[], None]) -> None:
        # Signalled once the clock's whole early reservation has returned (it moves the clock's
        # ceiling and ends its "running" mark last): the next step must not race it.
        def run() -> None:
            try:
                store()
            finally:
                done.set()

        early(run)

    wall = FakeWall(10_000)
    clock = HybridClock(wall)
    clock.persist(0, reserve, STEP_MS, early=early_then_done)
    clock.now()  # past the restored ceiling: stored at once, on this thread
    for _ in range(steps):
        done.clear()
        # Within half a step of the ceiling: the next step is reserved early.
        wall.ms = load_ceiling(tmp_path) - STEP_MS // 4
        clock.now()
        assert done.wait(10), "the early reservation did not run"
    return threads


def counting_thread_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads started from now on."""
    started: list[str] = []
    start = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)
    return started


def test_early_reservations_run_on_one_thread_started_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storer = CeilingStorer()
    try:
        started = counting_thread_starts(monkeypatch)
        threads = storing_threads(tmp_path, storer.run, steps=5)
        assert threads == {storer.thread.ident}
        assert started == [], f"threads started per reservation: {started}"
    finally:
        storer.close()
    storer.thread.join(5)
    assert not storer.thread.is_alive()


def test_a_thread_per_reservation_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Negative control of the check above: what the node did before, a thread per reservation.
    started = counting_thread_starts(monkeypatch)
    storing_threads(
        tmp_path,
        lambda store: threading.Thread(target=store, name="hlc-ceiling", daemon=True).start(),
        steps=5,
    )
    assert started == ["hlc-ceiling"] * 5


def test_a_failing_store_does_not_stop_later_ones() -> None:
    storer = CeilingStorer()
    ran = threading.Event()

    def fail() -> None:
        raise OSError("disk full")

    try:
        storer.run(fail)
        storer.run(ran.set)
        assert ran.wait(10)
        assert storer.thread.is_alive()
    finally:
        storer.close()
