"""A TCP proxy with a one-way delay in each direction, in its own process, put in front of a
node to emulate a distant region (the kernel here has no netem).

Run as `python -m bench.delay_proxy --target HOST:PORT --delay-ms 50`; it prints
`proxy listening on HOST:PORT` when ready."""

from __future__ import annotations

import argparse
import asyncio
import signal

from tests.support.tcp_proxy import TcpProxy

DELAY_MS_MAX = 10_000


async def serve(target: str, delay_ms: float) -> None:
    proxy = TcpProxy(target, delay_s=delay_ms / 1000.0)
    address = await proxy.start()
    print(f"proxy listening on {address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="TCP proxy with a one-way delay (benchmark).")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="delay in each direction")
    args = parser.parse_args()
    if not 0 <= args.delay_ms <= DELAY_MS_MAX:
        parser.error(f"--delay-ms must be 0 to {DELAY_MS_MAX}")
    asyncio.run(serve(args.target, args.delay_ms))


if __name__ == "__main__":
    main()
