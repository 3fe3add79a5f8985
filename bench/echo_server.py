"""The baseline server: a bare grpc.aio unary echo in its own process, with the node's server
options and its Put message, so that a client call costs what a Put costs minus the node's work.
It runs on the node's event loop (uvloop when installed, node/runtime.py): on the standard loop
the echo itself would cost about a fifth more CPU per call, a share of every ratio to it that
is not the node's work. With `--tls-dir` it serves mutual TLS as a node does (a server
certificate, the client's demanded and checked), the baseline of a node serving mutual TLS;
without, plaintext, the baseline of a node run with `--insecure`.

With `--redis-url URL` it is the floor of a cache hit instead: each call reads one key from
Redis before it answers, over the node's own Redis client (node/cache/resp.py), the GET written
from the request's deserializer as a node's Get does (node/api/read_ahead.py), so that its round
trip overlaps what gRPC does before the handler runs. Nothing else a Get does (authorization,
the read's policy decision, decoding the key state, the answer) is done: no hit can cost less.

With `--busy-us BEFORE,WHILE,AFTER` as well, the floor also spins for that many microseconds of
CPU at each of a hit's three points: in the deserializer before the GET is written, between the
write and the wait for its reply, and after the reply (bench.hit_cost). The spinning holds the
interpreter, as the node's Python there does; it prices CPU at each point in latency.

Run as `python -m bench.echo_server [--tls-dir DIR --tls-stem STEM] [--redis-url URL --redis-key
KEY [--busy-us B,W,A]]`; it prints `echo listening on HOST:PORT` when ready."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.stopping import stop_on_signals
from domicile.identity.credentials import ServerSecurity
from domicile.identity.tls_files import TlsFiles
from domicile.v1 import storage_node_pb2 as spb
from node import runtime
from node.cache.resp import LoopRedis, SentGet
from node.config import NodeConfig
from node.replication.outbound import CHANNEL_OPTIONS

SERVICE = "domicile.bench.Echo"
METHOD = f"/{SERVICE}/Echo"


# A cache hit's deadline for its Redis call: a node's default.
REDIS_DEADLINE_S = NodeConfig.cache_deadline_ms / 1000


@dataclass(frozen=True)
class BusyWork:
    """Microseconds of CPU a floor spends at each point of a hit (bench.hit_cost)."""

    before_send_us: int = 0
    while_waiting_us: int = 0
    after_reply_us: int = 0

    BUSY_US_MAX = 10_000

    @classmethod
    def parse(cls, text: str) -> BusyWork:
        """From "BEFORE,WHILE,AFTER" (three whole numbers of microseconds, 0 to BUSY_US_MAX)."""
        parts = text.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(
                f"busy work {text!r} is not three whole numbers of microseconds BEFORE,WHILE,AFTER "
                "(for example 0,60,0)"
            )
        before, during, after = (int(p) for p in parts)
        if max(before, during, after) > cls.BUSY_US_MAX:
            raise ValueError(f"busy work {text!r}: each part is at most {cls.BUSY_US_MAX} us")
        return cls(before, during, after)

    def __str__(self) -> str:
        return f"{self.before_send_us},{self.while_waiting_us},{self.after_reply_us}"


def spin(us: int) -> None:
    """Spends `us` microseconds of CPU in this thread, holding the interpreter."""
    if us > 0:
        end = time.perf_counter_ns() + us * 1000
        while time.perf_counter_ns() < end:
            pass


async def echo(request: spb.PutRequest, context: grpc.aio.ServicerContext) -> spb.PutRequest:
    return request


def _echo_method(redis_url: str | None, redis_key: bytes, busy: BusyWork) -> grpc.RpcMethodHandler:
    if redis_url is None:
        return grpc.unary_unary_rpc_method_handler(
            echo,
            request_deserializer=spb.PutRequest.FromString,
            response_serializer=spb.PutRequest.SerializeToString,
        )
    redis = LoopRedis(redis_url, deadline_s=REDIS_DEADLINE_S)

    def read_ahead(data: bytes) -> tuple[spb.PutRequest, SentGet | None]:
        spin(busy.before_send_us)
        return spb.PutRequest.FromString(data), redis.send_get(redis_key)

    async def echo_after_get(
        received: tuple[spb.PutRequest, SentGet | None], context: grpc.aio.ServicerContext
    ) -> spb.PutRequest:
        request, sent = received
        spin(busy.while_waiting_us)
        reply = await (sent.reply() if sent is not None else redis.get(redis_key))
        spin(busy.after_reply_us)
        if reply is None:
            # A floor of a miss would be no floor of a hit: the bench sets the key first.
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Redis holds no key {redis_key!r}")
        return request

    return grpc.unary_unary_rpc_method_handler(
        echo_after_get,
        request_deserializer=read_ahead,
        response_serializer=spb.PutRequest.SerializeToString,
    )


async def start(
    listen: str,
    tls: TlsFiles | None,
    redis_url: str | None = None,
    redis_key: bytes = b"",
    busy: BusyWork = BusyWork(),
) -> tuple[grpc.aio.Server, int]:
    """The server, started, and its port."""
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": _echo_method(redis_url, redis_key, busy)}
    )
    server.add_generic_rpc_handlers((handler,))
    # Through the seam every daemon uses for its ports (TLS material checked before it binds).
    port = (
        ServerSecurity.mutual_tls(tls).add_port(server, listen) if tls else server.add_insecure_port(listen)
    )
    if port == 0:
        raise SystemExit(f"echo server cannot listen on {listen}")
    await server.start()
    return server, port


async def serve(
    listen: str, tls: TlsFiles | None, redis_url: str | None, redis_key: bytes, busy: BusyWork
) -> None:
    server, port = await start(listen, tls, redis_url, redis_key, busy)
    print(f"echo listening on {listen.rpartition(':')[0]}:{port}", flush=True)
    stop = stop_on_signals()
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Bare grpc.aio echo server (benchmark baseline).")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    parser.add_argument(
        "--tls-dir", type=Path, help="serve mutual TLS with ca.crt, STEM.crt, STEM.key of DIR"
    )
    parser.add_argument("--tls-stem", default="echo", help="the certificate's file stem in --tls-dir (echo)")
    parser.add_argument(
        "--redis-url", help="read --redis-key from this Redis before each answer (a hit's floor)"
    )
    parser.add_argument("--redis-key", default="floor", help="the key each call reads (floor)")
    parser.add_argument(
        "--busy-us",
        default="0,0,0",
        help="with --redis-url: microseconds of CPU spent before the GET, while it is out, after its reply",
    )
    args = parser.parse_args()
    try:
        busy = BusyWork.parse(args.busy_us)
    except ValueError as exc:
        parser.error(str(exc))
    if busy != BusyWork() and args.redis_url is None:
        parser.error("--busy-us prices the points of a hit: it needs --redis-url")
    tls = TlsFiles.in_directory(args.tls_dir, args.tls_stem) if args.tls_dir else None
    runtime.run(serve(args.listen, tls, args.redis_url, args.redis_key.encode(), busy))


if __name__ == "__main__":
    main()
