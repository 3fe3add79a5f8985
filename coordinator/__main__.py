"""`python -m coordinator`: run the coordinator until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from coordinator.config import CoordinatorConfig, config_from_args, configure_logging
from coordinator.daemon import Coordinator
from domicile.errors import DomicileError

log = logging.getLogger("coordinator")

EXIT_CONFIG = 2
EXIT_START = 1


async def serve(config: CoordinatorConfig) -> None:
    coordinator = Coordinator(config)
    await coordinator.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    metrics = coordinator.metrics_url or "disabled"
    print(f"coordinator listening on {coordinator.address} metrics {metrics}", flush=True)
    try:
        await stopping.wait()
        log.info("signal received; stopping")
    finally:
        await coordinator.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["restore"]:
        from coordinator.state_backup import restore_main

        return restore_main(args[1:])
    try:
        config = config_from_args(args)
    except DomicileError as exc:
        print(f"coordinator: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except DomicileError as exc:
        log.error("coordinator cannot run: %s", exc.message)
        return EXIT_START
    return 0


if __name__ == "__main__":
    sys.exit(main())
