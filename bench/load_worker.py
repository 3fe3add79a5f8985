"""A load generator process: `inflight` calls always outstanding against a node (Put) or the
echo server, for a fixed time. Several of these run side by side so that the client is not
the bottleneck of a single Python process.

Protocol: prints `ready` once connected and warmed up, waits for `go` on stdin, runs for
--seconds, then prints one JSON line: completed (records written: a PutBatch call counts its
records), errors (calls), elapsed_s, first_error."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc

from bench.client import channel, echo_call, put_batch_call, put_call
from domicile.identity.credentials import Dialer
from domicile.identity.tls_files import TlsFiles

INFLIGHT_MAX = 1024
SECONDS_MAX = 600.0


async def run(args: argparse.Namespace) -> dict[str, object]:
    value = b"v" * args.value_bytes
    if args.tls_dir:
        dialer = Dialer.mutual_tls(TlsFiles.in_directory(args.tls_dir, f"client-{args.identity}"))
    else:
        dialer = Dialer.plaintext()
    async with channel(args.address, dialer) as ch:
        if args.method == "put_batch":
            call = put_batch_call(ch, args.namespace, args.key_prefix, value, args.batch_records)
        else:
            make = put_call if args.method == "put" else echo_call
            call = make(ch, args.namespace, args.key_prefix, value)
        counter = iter(range(1 << 62))
        await asyncio.gather(*(call(next(counter)) for _ in range(args.inflight)))
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        command = await loop.run_in_executor(None, sys.stdin.readline)
        if command.strip() != "go":
            raise SystemExit(f"expected 'go' on stdin, got {command!r}")
        records_per_call = args.batch_records if args.method == "put_batch" else 1
        completed = 0
        errors = 0
        first_error = ""
        started = time.perf_counter()
        end = started + args.seconds

        async def lane() -> None:
            nonlocal completed, errors, first_error
            while time.perf_counter() < end:
                try:
                    await call(next(counter))
                except grpc.aio.AioRpcError as exc:
                    errors += 1
                    first_error = first_error or f"{exc.code().name}: {exc.details()}"
                except RuntimeError as exc:
                    errors += 1
                    first_error = first_error or str(exc)
                else:
                    completed += records_per_call

        await asyncio.gather(*(lane() for _ in range(args.inflight)))
        return {
            "completed": completed,
            "errors": errors,
            "elapsed_s": time.perf_counter() - started,
            "first_error": first_error,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description="Concurrent Put or echo load for a fixed time.")
    parser.add_argument("--address", required=True)
    parser.add_argument("--method", choices=("put", "put_batch", "echo"), required=True)
    parser.add_argument("--batch-records", type=int, default=100, help="records per PutBatch call")
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--key-prefix", required=True)
    parser.add_argument("--value-bytes", type=int, default=256)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tls-dir", type=Path, help="mutual TLS with client-IDENTITY of this directory")
    parser.add_argument("--identity", default="bench")
    args = parser.parse_args()
    if not 1 <= args.inflight <= INFLIGHT_MAX:
        parser.error(f"--inflight must be 1 to {INFLIGHT_MAX}")
    if not 0 < args.seconds <= SECONDS_MAX:
        parser.error(f"--seconds must be above 0 and at most {SECONDS_MAX:.0f}")
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
