"""Argument parsing and dispatch for the `domicile` command.

Exit codes: 0 success; 1 `get` found nothing or `up` lost a child; 2 an error (printed as
`error: <message>` on stderr) or a usage mistake.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from domicile.client import DEFAULT_COORDINATOR
from domicile.errors import DomicileError, PlacementRefused
from domicile.model import Classification

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DAEMONS = ("node", "coordinator")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _classification(text: str) -> str:
    allowed = [c.label for c in Classification if c is not Classification.UNSPECIFIED]
    if text.lower() not in allowed:
        raise argparse.ArgumentTypeError(f"unknown classification {text!r}; allowed: {', '.join(allowed)}")
    return text.lower()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domicile",
        description="Domicile: a record store that keeps every record in the jurisdiction it belongs to.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--coordinator",
        default=os.environ.get("DOMICILE_COORDINATOR", DEFAULT_COORDINATOR),
        metavar="HOST:PORT",
        help="coordinator address (default: $DOMICILE_COORDINATOR or %(default)s)",
    )
    common.add_argument(
        "--deadline",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of each request, retries included (default: %(default)s)",
    )
    record = argparse.ArgumentParser(add_help=False, parents=[common])
    record.add_argument("--namespace", "-n", required=True, help="namespace (dataset) name")
    record.add_argument("--region", "-r", help="send to this region instead of routing by the topology")

    p = sub.add_parser(
        "up",
        help="run a local cluster: the coordinator and one node per region",
        description="Start the coordinator and one node per region of the cluster config as child "
        "processes, wait until they are healthy, print their endpoints and run until Ctrl-C.",
    )
    p.add_argument("--config", default="deploy/cluster.yaml", help="cluster config (default: %(default)s)")
    p.add_argument("--data-dir", default=".domicile", help="data and logs directory (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument(
        "--base-port",
        type=_port,
        default=7400,
        help="coordinator port; region i listens on base-port + i (default: %(default)s)",
    )
    p.add_argument(
        "--metrics-base-port",
        type=_port,
        default=9400,
        help="metrics port of the coordinator, then one per region; 0 disables (default: %(default)s)",
    )
    p.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    p.add_argument(
        "--startup-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for every process to be healthy (default: %(default)s)",
    )
    p.add_argument(
        "--stop-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="how long each process may take to stop before it is killed (default: %(default)s)",
    )

    for daemon in DAEMONS:
        sub.add_parser(
            daemon,
            help=f"run the {daemon} daemon (the remaining arguments go to `python -m {daemon}`)",
            add_help=False,
        )

    p = sub.add_parser("put", parents=[record], help="write a record")
    p.add_argument("--key", "-k", required=True)
    value = p.add_mutually_exclusive_group(required=True)
    value.add_argument("--value", "-v", help="the value, as UTF-8 text")
    value.add_argument("--value-file", metavar="PATH", help="read the value's bytes from a file")
    p.add_argument("--subject-id", default="", help="the data subject the record is about")
    p.add_argument(
        "--subject-jurisdiction", default="", metavar="CC", help="ISO 3166 code of the subject, e.g. DE"
    )
    p.add_argument("--classification", type=_classification, help="default: the namespace's")
    p.add_argument("--content-type", default="", help="MIME type of the value")
    p.add_argument("--context", help="context printed by an earlier get: the versions this write supersedes")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser(
        "get",
        parents=[record],
        help="read a record (exit 1 when not found)",
        description="Print the value; concurrent siblings print one per line as DOT<TAB>VALUE. "
        "Exit 0 when found, 1 when not found, 2 on error.",
    )
    p.add_argument("--key", "-k", required=True)
    p.add_argument("--json", action="store_true", help="print versions, dots and context as JSON")

    p = sub.add_parser("delete", parents=[record], help="delete a record (writes a tombstone)")
    p.add_argument("--key", "-k", required=True)
    p.add_argument("--context", help="delete only the versions of this context (from get)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser(
        "scan",
        parents=[record],
        help="list records by key prefix",
        description="Print KEY<TAB>VALUE per live version in key order; --json prints one JSON "
        "object per record per line.",
    )
    p.add_argument("--prefix", "-p", default="", help="only keys starting with this")
    p.add_argument("--limit", type=_positive_int, help="at most this many records")
    p.add_argument("--json", action="store_true", help="JSON Lines output")

    p = sub.add_parser(
        "status", parents=[common], help="topology, node health and replication links of the cluster"
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    return parser


def exec_daemon(daemon: str, args: Sequence[str]) -> None:
    """Replaces this process with the daemon so that signals reach it directly."""
    argv = [sys.executable, "-m", daemon, *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    # Imported on use: `domicile get` should not pay for what `up` needs, and the reverse.
    if command == "up":
        from domicile.cli.up import up

        return up
    if command == "status":
        from domicile.cli.status import status

        return status
    from domicile.cli import records

    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "put": records.put,
        "get": records.get,
        "delete": records.delete,
        "scan": records.scan,
    }
    return handlers[command]


def report_error(error: DomicileError) -> None:
    print(f"error: {error.message}", file=sys.stderr)
    if isinstance(error, PlacementRefused):
        print(f"allowed regions: {', '.join(error.allowed_regions) or 'none'}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    # Daemon flags belong to the daemon; argparse must not see (or reject) them.
    if args_in and args_in[0] in DAEMONS:
        exec_daemon(args_in[0], args_in[1:])
    args = build_parser().parse_args(args_in)
    try:
        return _handler(args.command)(args)
    except DomicileError as exc:
        report_error(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `domicile scan ... | head`); that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
