"""Offload.warm: a prepare step that fails on one thread releases the others at once and warm
raises that failure, not the broken barrier it leaves."""

from __future__ import annotations

import threading

import pytest

from node.offload import Offload


async def test_a_failing_prepare_is_raised_and_every_job_has_ended() -> None:
    offload = Offload(3)
    calls = 0
    lock = threading.Lock()
    ended: list[str] = []

    def prepare() -> None:
        nonlocal calls
        with lock:
            calls += 1
            first = calls == 1
        if first:
            ended.append("failed")
            raise OSError("disk gone")

    try:
        with pytest.raises(OSError, match="disk gone"):
            await offload.warm(prepare)
        # The pool is usable again: a second warm-up takes every thread.
        await offload.warm(lambda: None)
        assert ended == ["failed"]
    finally:
        offload.close()
