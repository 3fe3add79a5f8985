"""bench.sync_floor: the floor of a synchronous Put answers only once the record is durable at
the origin and the far server acknowledged it durable too, shipped before or after the origin's
own write, in plaintext or over mutual TLS as nodes speak."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from bench import sync_floor
from bench.replication import floor_call
from domicile.identity import pki
from domicile.identity.credentials import Dialer
from domicile.identity.principal import Role
from domicile.identity.tls_files import TlsFiles


def records(directory: Path) -> bytes:
    return (directory / "records").read_bytes()


@pytest.mark.parametrize("serial", [True, False])
async def test_a_floor_put_is_answered_once_both_files_hold_it(tmp_path: Path, serial: bool) -> None:
    far_dir, origin_dir = tmp_path / "far", tmp_path / "origin"
    os.mkdir(far_dir)
    os.mkdir(origin_dir)
    far, far_port, _, far_disk = await sync_floor.start("far", "127.0.0.1:0", str(far_dir))
    origin, port, side, origin_disk = await sync_floor.start(
        "origin", "127.0.0.1:0", str(origin_dir), f"127.0.0.1:{far_port}", serial
    )
    assert side is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = floor_call(channel, b"record-1")
            await call(0)
            assert records(origin_dir) == b"record-1"
            # The far file holds the record framed with its sequence number.
            assert records(far_dir) == sync_floor.SEQ.pack(0) + b"record-1"
            await call(1)
            assert records(origin_dir) == b"record-1" * 2
            # Negative control: with the far server gone, no call is answered as held.
            await far.stop(0)
            with pytest.raises(grpc.aio.AioRpcError):
                await call(2)
    finally:
        await origin.stop(0)
        await far.stop(0)
        await side.close()
        far_disk.close()
        origin_disk.close()


async def test_a_floor_over_mutual_tls_answers_only_a_client_of_its_ca(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    ca = pki.init_ca(tls_dir, "domicile")
    pki.issue_node(ca, "us-east-1", "floor").write(tls_dir, "floor")
    pki.issue_client(ca, "bench", (Role.APP,)).write(tls_dir, "client")
    tls = TlsFiles.in_directory(tls_dir, "floor")
    far_dir, origin_dir = tmp_path / "far", tmp_path / "origin"
    os.mkdir(far_dir)
    os.mkdir(origin_dir)
    far, far_port, _, far_disk = await sync_floor.start("far", "127.0.0.1:0", str(far_dir), tls=tls)
    origin, port, side, origin_disk = await sync_floor.start(
        "origin", "127.0.0.1:0", str(origin_dir), f"127.0.0.1:{far_port}", True, tls
    )
    assert side is not None
    try:
        client = Dialer.mutual_tls(TlsFiles.in_directory(tls_dir, "client"))
        async with client.channel(f"127.0.0.1:{port}") as channel:
            await floor_call(channel, b"record-1")(0)
        # Both hops spoke TLS: the far server holds the record the origin shipped to it.
        assert records(far_dir) == sync_floor.SEQ.pack(0) + b"record-1"
        # Negative control: a plaintext client is not answered.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await floor_call(plain, b"record-2")(1)
        assert records(origin_dir) == b"record-1"
    finally:
        await origin.stop(0)
        await far.stop(0)
        await side.close()
        far_disk.close()
        origin_disk.close()
