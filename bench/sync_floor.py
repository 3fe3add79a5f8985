"""The floor of a synchronous Put (`min_regions_acked: 2`): what its protocol costs when nothing
else is done. Two bare grpc.aio servers, each in its own process on the node's event loop:

- `far`: takes records on a long-lived bidirectional stream, appends each to a file and makes it
  durable (`fdatasync`, on the event loop itself: no hop to a writer thread), then acknowledges
  it on the stream;
- `origin`: answers a unary call once the record is durable in its own file and the far server
  acknowledged it. With `--serial` it makes it durable first and ships it after, as a node does
  today (the source's commit, then the far node's, in series); without, it ships first and makes
  it durable while the record travels, the least a two-region acknowledgement can cost.

The origin reaches the far server through the same delay proxy a node's link does
(bench.delay_proxy), so a floor call crosses the emulated network once each way, as a Put's
record and its acknowledgement do. With `--tls-dir DIR --tls-stem STEM` both serve mutual TLS and
the origin dials the far server with the same certificate, as nodes do (every port of a node is
authenticated and encrypted); without, plaintext. Everything else a node does (decoding and
checking the request, the policy's decisions and their audit entries, the key state, the change
log, the replication window) is left out: no synchronous Put can cost less, so a Put against its
floor is what the node adds.

Run as `python -m bench.sync_floor far` or `python -m bench.sync_floor origin --far HOST:PORT
[--serial]`, either with `--tls-dir DIR --tls-stem STEM`; each prints `sync floor listening on
HOST:PORT` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from bench.stopping import stop_on_signals
from domicile.identity.credentials import Dialer, ServerSecurity
from domicile.identity.tls_files import TlsFiles
from node import runtime
from node.replication.outbound import CHANNEL_OPTIONS

READY = "sync floor listening on "
SERVICE = "domicile.bench.SyncFloor"
PUT_METHOD = f"/{SERVICE}/Put"
HOLD_METHOD = f"/{SERVICE}/Hold"
# A record on the stream: its sequence number, then its bytes; an acknowledgement: the number.
SEQ = struct.Struct(">Q")


def _identity(data: bytes) -> bytes:
    return data


class DurableFile:
    """An append-only file in a directory of its own, each append durable before it returns."""

    def __init__(self, directory: str) -> None:
        self.fd = os.open(os.path.join(directory, "records"), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)

    def append(self, data: bytes) -> None:
        os.write(self.fd, data)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def far_handler(disk: DurableFile) -> grpc.RpcMethodHandler:
    async def hold(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        async for record in requests:
            disk.append(record)
            yield record[: SEQ.size]

    return grpc.stream_stream_rpc_method_handler(
        hold, request_deserializer=_identity, response_serializer=_identity
    )


class Origin:
    """The origin's side of the one stream to the far server: records out, acknowledgements in."""

    def __init__(self, far: str, disk: DurableFile, serial: bool, tls: TlsFiles | None = None) -> None:
        dialer = Dialer.mutual_tls(tls) if tls is not None else Dialer.plaintext()
        self.channel = dialer.channel(far, options=CHANNEL_OPTIONS)
        self.disk = disk
        self.serial = serial
        self._call: grpc.aio.StreamStreamCall | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._next = 0
        self._reader: asyncio.Task[None] | None = None

    async def _stream(self) -> grpc.aio.StreamStreamCall:
        if self._call is None or self._call.done():
            hold = self.channel.stream_stream(
                HOLD_METHOD, request_serializer=_identity, response_deserializer=_identity
            )
            self._call = hold()
            self._reader = asyncio.create_task(self._read_acks(self._call))
        return self._call

    async def _read_acks(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for ack in call:
                (seq,) = SEQ.unpack(ack)
                waiter = self._acks.pop(seq, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
        except grpc.aio.AioRpcError:
            pass  # the stream failed: its calls waiting for acks fail below, the next opens another
        finally:
            for waiter in self._acks.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the far server's stream ended"))
            self._acks.clear()

    async def put(self, record: bytes, context: grpc.aio.ServicerContext) -> bytes:
        call = await self._stream()
        seq = self._next
        self._next += 1
        acked = asyncio.get_running_loop().create_future()
        self._acks[seq] = acked
        framed = SEQ.pack(seq) + record
        if self.serial:
            self.disk.append(record)
            await call.write(framed)
        else:
            await call.write(framed)
            self.disk.append(record)
        await acked
        return b""

    def handler(self) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            self.put, request_deserializer=_identity, response_serializer=_identity
        )

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.channel.close()


async def start(
    role: str,
    listen: str,
    directory: str,
    far: str = "",
    serial: bool = False,
    tls: TlsFiles | None = None,
) -> tuple[grpc.aio.Server, int, Origin | None, DurableFile]:
    """A started server of `role` ("far" or "origin"), its port, its Origin (None for far) and
    its file. With `tls`, mutual TLS on its port and on the origin's stream to the far server."""
    disk = DurableFile(directory)
    origin = Origin(far, disk, serial, tls) if role == "origin" else None
    methods = {"Put": origin.handler()} if origin is not None else {"Hold": far_handler(disk)}
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    if tls is not None:
        port = ServerSecurity.mutual_tls(tls).add_port(server, listen)
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"sync floor cannot listen on {listen}")
    await server.start()
    return server, port, origin, disk


async def serve(role: str, listen: str, far: str, serial: bool, tls: TlsFiles | None) -> None:
    with tempfile.TemporaryDirectory(prefix=f"domicile-sync-floor-{role}-") as directory:
        server, port, origin, disk = await start(role, listen, directory, far, serial, tls)
        print(f"{READY}{listen.rpartition(':')[0]}:{port}", flush=True)
        stop = stop_on_signals()
        await stop.wait()
        await server.stop(0.5)
        if origin is not None:
            await origin.close()
        disk.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="The floor of a synchronous Put (benchmark baseline).")
    parser.add_argument("role", choices=("far", "origin"))
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    parser.add_argument("--far", default="", help="origin: the far server's HOST:PORT (its delay proxy)")
    parser.add_argument(
        "--serial", action="store_true", help="origin: durable here first, then shipped (as a node does)"
    )
    parser.add_argument(
        "--tls-dir", type=Path, help="serve and dial mutual TLS with ca.crt, STEM.crt, STEM.key of DIR"
    )
    parser.add_argument("--tls-stem", default="floor", help="the certificate's stem in --tls-dir (floor)")
    args = parser.parse_args()
    if args.role == "origin" and not args.far:
        parser.error("origin needs --far HOST:PORT")
    tls = TlsFiles.in_directory(args.tls_dir, args.tls_stem) if args.tls_dir else None
    runtime.run(serve(args.role, args.listen, args.far, args.serial, tls))


if __name__ == "__main__":
    main()
