"""The floors `make bench-hit-cost` measures: busy work parsed and spent at the point it names
(bench/echo_server.py --busy-us), and the figures the run derives from the calls' latencies."""

from __future__ import annotations

import time

import grpc
import pytest
import redis as redis_py

from bench.client import echo_call
from bench.echo_server import BusyWork, spin, start
from bench.hit_cost import busy_label, figures, main
from domicile.redis_server import RedisServer


def test_busy_work_is_three_whole_numbers_of_microseconds() -> None:
    assert BusyWork.parse("40,0,7") == BusyWork(40, 0, 7)
    assert str(BusyWork(0, 120, 0)) == "0,120,0"
    for bad in ("40,0", "a,0,0", "-1,0,0", "1.5,0,0", f"0,{BusyWork.BUSY_US_MAX + 1},0"):
        with pytest.raises(ValueError, match="busy work"):
            BusyWork.parse(bad)


def test_spin_spends_at_least_the_time_asked() -> None:
    started = time.perf_counter_ns()
    spin(2000)
    assert time.perf_counter_ns() - started >= 2_000_000
    started = time.perf_counter_ns()
    spin(0)
    assert time.perf_counter_ns() - started < 2_000_000


def test_labels_name_where_the_time_is_spent() -> None:
    assert busy_label(BusyWork()) == "floor"
    assert busy_label(BusyWork(0, 60, 0)) == "floor + 60 us while it is out"
    assert busy_label(BusyWork(10, 0, 5)) == "floor + 10 us before the GET, 5 us after its reply"


def test_figures_price_each_microsecond_against_the_bare_floor() -> None:
    echo = [1.0] * 99 + [2.0]
    found = {f.key: f for f in figures(echo, {BusyWork(): [1.1] * 100, BusyWork(0, 100, 0): [1.15] * 100})}
    assert found["hit_cost_0_0_0_p50"].value == pytest.approx(1.1)
    assert found["hit_cost_0_0_0_p50"].ratio == pytest.approx(1.1)
    assert "hit_cost_0_0_0_p50_per_us" not in found  # nothing spun: nothing to price
    # 0.05 ms more for 100 us spun: half of each microsecond shows.
    assert found["hit_cost_0_100_0_p50_per_us"].value == pytest.approx(0.5)
    assert found["hit_cost_0_100_0_p99"].baseline == pytest.approx(1.01)  # interpolated


async def test_a_busy_floor_spends_its_time_where_it_says(redis: RedisServer) -> None:
    client = redis_py.Redis.from_url(redis.url)
    client.set("k", b"entry")
    servers = [
        await start("127.0.0.1:0", None, redis.url, b"k", busy) for busy in (BusyWork(), BusyWork(0, 0, 3000))
    ]
    try:
        took = []
        for _, port in servers:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = echo_call(channel, "ns", "k", b"v")
                await call(0)
                started = time.perf_counter()
                await call(1)
                took.append(time.perf_counter() - started)
        # Negative control beside it: the bare floor answers well within the 3 ms the other spins.
        assert took[1] >= 0.003 > took[0]
    finally:
        for server, _ in servers:
            await server.stop(0)
        client.close()


def test_the_run_refuses_a_bad_busy_and_a_repeated_one(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, says in ((["--busy", "1,2"], "three whole numbers"), (["--busy", "0,0,0"], "must differ")):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert says in capsys.readouterr().err
