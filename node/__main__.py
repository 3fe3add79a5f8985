"""`python -m node`: run one regional node until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from domicile.errors import DomicileError
from node import runtime
from node.config import parse_args
from node.daemon import Node
from node.gc_tuning import tune_for_serving


async def serve(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [" + config.node_id + "] %(message)s",
        stream=sys.stderr,
    )
    node = Node(config)
    try:
        await node.start()
    except DomicileError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    tune_for_serving()
    metrics = node.metrics_url or "disabled"
    print(
        f"node {config.node_id} region {config.region} listening on {node.address} metrics {metrics}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return runtime.run(serve(argv))


def exit_now(code: int) -> NoReturn:
    """Ends the process once the node has stopped, without the interpreter's teardown. Node.stop()
    has closed everything the node holds (stores flushed and closed, audit log closed, ports
    released); what teardown would still do is collect the heap, and collecting a stopped node's
    gRPC objects took seconds of CPU (tens on a busy machine), past a supervisor's stop grace
    (`domicile up --stop-timeout`), which then killed the node instead of seeing it exit 0."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
