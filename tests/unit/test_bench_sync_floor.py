"""bench.sync_floor: the floor of a synchronous Put answers only once the record is durable at
the origin and the far server acknowledged it durable too, shipped before or after the origin's
own write, in plaintext or over mutual TLS as nodes speak."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bench import sync_floor
from bench.replication import floor_call
from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.identity.tls_files import TlsFiles


@dataclass
class Floor:
    far: grpc.aio.Server  # the far server, to stop it early
    origin_address: str
    far_dir: Path
    origin_dir: Path


def records(directory: Path) -> bytes:
    return (directory / "records").read_bytes()


@asynccontextmanager
async def floor(tmp_path: Path, serial: bool, tls: TlsFiles | None = None) -> AsyncIterator[Floor]:
    """A far server and an origin in this process, each with its file in a directory of its own."""
    far_dir, origin_dir = tmp_path / "far", tmp_path / "origin"
    os.mkdir(far_dir)
    os.mkdir(origin_dir)
    far, far_port, _, far_disk = await sync_floor.start("far", "127.0.0.1:0", str(far_dir), tls=tls)
    origin, port, side, origin_disk = await sync_floor.start(
        "origin", "127.0.0.1:0", str(origin_dir), f"127.0.0.1:{far_port}", serial, tls
    )
    assert side is not None
    try:
        yield Floor(far, f"127.0.0.1:{port}", far_dir, origin_dir)
    finally:
        await origin.stop(0)
        await far.stop(0)
        await side.close()
        far_disk.close()
        origin_disk.close()


@pytest.mark.parametrize("serial", [True, False])
async def test_a_floor_put_is_answered_once_both_files_hold_it(tmp_path: Path, serial: bool) -> None:
    async with floor(tmp_path, serial) as f, grpc.aio.insecure_channel(f.origin_address) as channel:
        call = floor_call(channel, b"record-1")
        await call(0)
        assert records(f.origin_dir) == b"record-1"
        # The far file holds the record framed with its sequence number.
        assert records(f.far_dir) == sync_floor.SEQ.pack(0) + b"record-1"
        await call(1)
        assert records(f.origin_dir) == b"record-1" * 2
        # Negative control: with the far server gone, no call is answered as held.
        await f.far.stop(0)
        with pytest.raises(grpc.aio.AioRpcError):
            await call(2)


async def test_a_floor_over_mutual_tls_answers_only_a_client_of_its_ca(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    ca = pki.init_ca(tls_dir, "domicile")
    pki.issue_node(ca, "us-east-1", "floor").write(tls_dir, "floor")
    pki.issue_client(ca, "bench", (Role.APP,)).write(tls_dir, "client")
    async with floor(tmp_path, True, TlsFiles.in_directory(tls_dir, "floor")) as f:
        client = Dialer.mutual_tls(TlsFiles.in_directory(tls_dir, "client"))
        async with client.channel(f.origin_address) as channel:
            await floor_call(channel, b"record-1")(0)
        # Both hops spoke TLS: the far server holds the record the origin shipped to it.
        assert records(f.far_dir) == sync_floor.SEQ.pack(0) + b"record-1"
        # Negative control: a plaintext client is not answered.
        async with grpc.aio.insecure_channel(f.origin_address) as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await floor_call(plain, b"record-2")(1)
        assert records(f.origin_dir) == b"record-1"
