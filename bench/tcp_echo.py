"""A bare TCP echo server in its own process, on the node's event loop: behind a delay proxy it
gives the round trip of the emulated network alone (the proxy's delays, its lateness and the
wake-ups of the processes on the way), the baseline a synchronous write's latency is read
against.

Run as `python -m bench.tcp_echo`; it prints `tcp echo listening on HOST:PORT` when ready."""

from __future__ import annotations

import argparse
import asyncio

from bench.stopping import stop_on_signals
from node import runtime

READY = "tcp echo listening on "
READ_BYTES = 1 << 16


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_BYTES):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(listen: str) -> None:
    host, _, port = listen.rpartition(":")
    server = await asyncio.start_server(_echo, host, int(port))
    bound = server.sockets[0].getsockname()[1]
    print(f"{READY}{host}:{bound}", flush=True)
    stop = stop_on_signals()
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Bare TCP echo server (benchmark baseline).")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    runtime.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
