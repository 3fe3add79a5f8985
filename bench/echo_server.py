"""The baseline server: a bare grpc.aio unary echo in its own process, with the node's server
options and its Put message, so that a client call costs what a Put costs minus the node's work.
It runs on the node's event loop (uvloop when installed, node/runtime.py): on the standard loop
the echo itself would cost about a fifth more CPU per call, a share of every ratio to it that
is not the node's work. With `--tls-dir` it serves mutual TLS as a node does (a server
certificate, the client's demanded and checked), the baseline of a node serving mutual TLS;
without, plaintext, the baseline of a node run with `--insecure`.

Run as `python -m bench.echo_server [--tls-dir DIR --tls-stem STEM]`; it prints
`echo listening on HOST:PORT` when ready."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc

from domicile.identity.credentials import ServerSecurity
from domicile.identity.tls_files import TlsFiles
from domicile.v1 import storage_node_pb2 as spb
from node import runtime
from node.replication.outbound import CHANNEL_OPTIONS

SERVICE = "domicile.bench.Echo"
METHOD = f"/{SERVICE}/Echo"


async def echo(request: spb.PutRequest, context: grpc.aio.ServicerContext) -> spb.PutRequest:
    return request


async def serve(listen: str, tls: TlsFiles | None) -> None:
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo,
                request_deserializer=spb.PutRequest.FromString,
                response_serializer=spb.PutRequest.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    host = listen.rpartition(":")[0]
    # Through the seam every daemon uses for its ports (TLS material checked before it binds).
    port = (
        ServerSecurity.mutual_tls(tls).add_port(server, listen) if tls else server.add_insecure_port(listen)
    )
    if port == 0:
        raise SystemExit(f"echo server cannot listen on {listen}")
    await server.start()
    print(f"echo listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Bare grpc.aio echo server (benchmark baseline).")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    parser.add_argument(
        "--tls-dir", type=Path, help="serve mutual TLS with ca.crt, STEM.crt, STEM.key of DIR"
    )
    parser.add_argument("--tls-stem", default="echo", help="the certificate's file stem in --tls-dir (echo)")
    args = parser.parse_args()
    tls = TlsFiles.in_directory(args.tls_dir, args.tls_stem) if args.tls_dir else None
    runtime.run(serve(args.listen, tls))


if __name__ == "__main__":
    main()
