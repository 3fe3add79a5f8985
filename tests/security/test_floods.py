"""Floods against a running node: more concurrent streams on one connection than the node
allows, and keepalive pings faster than it permits.

Neither is a call the authorization layer sees, so neither leaves a refusal in the audit trail;
the cases assert what must hold instead: the excess is held back (never served, never an error
of the honest), an honest client on another connection is served throughout, nothing stored
changes, and no entry is written for the flood.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from typing import Any

import grpc
import pytest

from domicile.identity.principal import Role
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from domicile.wire.limits import NODE_STREAMS_PER_CONNECTION_MAX
from tests.support.cluster import LocalCluster, eventually
from tests.support.negatives import ACCESS_DENIED, audit_mark, denial, entries_since, refused, state
from tests.support.tls import CLUSTER

pytestmark = pytest.mark.asyncio(loop_scope="module")
REGION = "eu-west-1"


async def honest_status(cluster: LocalCluster) -> None:
    """An honest client on a connection of its own is served."""
    assert cluster.pki is not None
    async with cluster.pki.dialer("honest-operator", (Role.OPERATOR,)).channel(
        cluster.nodes[REGION].address
    ) as ch:
        status = await spb_grpc.StorageNodeServiceStub(ch).GetNodeStatus(
            spb.GetNodeStatusRequest(), timeout=5
        )
    assert status.region == REGION


async def test_streams_past_the_per_connection_limit_wait_while_other_connections_are_served(
    secure: LocalCluster,
) -> None:
    """A node's key opens as many replication streams as one connection may carry and sends no
    hello on any: each holds a stream. The next call on that connection is held back by the
    client's HTTP/2 layer (it never reaches the node: its deadline passes), an honest client on
    another connection is served meanwhile, and once one stream ends the held-back call is
    served. The only audit entry is the refusal of that one call once it reached the node."""
    node = secure.nodes[REGION]
    before, seq = state(secure), await audit_mark(node)
    identity = f"spiffe://{CLUSTER}/region/eu-central-1/node/eu-central-1"
    async with secure.channel_as_node("eu-central-1", node.address) as channel:
        replication = rpb_grpc.ReplicationServiceStub(channel)
        held: list[Any] = []
        try:
            for _ in range(NODE_STREAMS_PER_CONNECTION_MAX):
                call = replication.Replicate(timeout=60)
                held.append(call)
            await asyncio.gather(*(call.wait_for_connection() for call in held))
            storage = spb_grpc.StorageNodeServiceStub(channel)
            # One stream too many: it waits for a free one, so its deadline passes unserved.
            await refused(
                storage.GetNodeStatus(spb.GetNodeStatusRequest(), timeout=1.0),
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            await honest_status(secure)
            assert [e for e in await entries_since(node, seq) if e.action == ACCESS_DENIED] == []
            held.pop().cancel()
            # A stream is free: the same call now reaches the node, which answers it (a node may
            # not read status, so the answer is a refusal, audited with the node's identity).
            await refused(
                storage.GetNodeStatus(spb.GetNodeStatusRequest(), timeout=10),
                grpc.StatusCode.PERMISSION_DENIED,
                "may not call storage.GetNodeStatus",
            )
        finally:
            for call in held:
                call.cancel()
    await denial(node, seq, "storage.GetNodeStatus", identity)
    assert state(secure) == before
    await honest_status(secure)


# HTTP/2 (RFC 9113): frame types and the error code a gRPC server sends a peer that pings too often.
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
ACK = 0x1
ENHANCE_YOUR_CALM = 0xB
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, payload: bytes = b"", stream: int = 0) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def read_exactly(tls: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = tls.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def ping_until_goaway(address: str, ca: str, cert: str, key: str, pings: int) -> tuple[int, bytes, int]:
    """Speaks HTTP/2 by hand over mutual TLS: the handshake, then `pings` PINGs back to back
    without a call. Returns the GOAWAY's error code, its debug data, and the pings sent before it."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        tls.sendall(PREFACE + frame(SETTINGS, 0))
        sent = 0
        while True:
            header = read_exactly(tls, 9)
            length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
            payload = read_exactly(tls, length)
            if kind == SETTINGS and not flags & ACK:
                tls.sendall(frame(SETTINGS, ACK))
                # The server's settings are in: start pinging, one at a time as each is answered.
                tls.sendall(frame(PING, 0, struct.pack(">Q", sent)))
                sent += 1
            elif kind == PING and flags & ACK:
                if sent >= pings:
                    raise AssertionError(f"no GOAWAY after {sent} pings")
                tls.sendall(frame(PING, 0, struct.pack(">Q", sent)))
                sent += 1
            elif kind == GOAWAY:
                error = int.from_bytes(payload[4:8], "big")
                return error, payload[8:], sent


async def test_keepalive_ping_abuse_gets_goaway_and_the_node_serves_on(secure: LocalCluster) -> None:
    """A client's connection pings without pause: the node answers with GOAWAY
    (ENHANCE_YOUR_CALM, "too_many_pings") after a few, and keeps serving everyone else. Pings
    are transport, not calls: no audit entry can name them, and none is written."""
    assert secure.pki is not None
    node = secure.nodes[REGION]
    files = secure.pki.client("pinger", (Role.APP,))
    before, seq = state(secure), await audit_mark(node)
    # Within ten pings (the node allows a first one and max_ping_strikes more; how gRPC counts
    # the first few is its own), or ping_until_goaway fails.
    error, debug, _ = await asyncio.to_thread(
        ping_until_goaway, node.address, str(files.ca), str(files.cert), str(files.key), 10
    )
    assert error == ENHANCE_YOUR_CALM, error
    assert debug == b"too_many_pings"
    assert state(secure) == before
    assert [
        e for e in await entries_since(node, seq) if e.action == ACCESS_DENIED or "pinger" in e.principal
    ] == []
    # The node survives: honest clients are served, and replication carries a new write on.
    await honest_status(secure)
    await secure.put(REGION, "instruments", "after-pings", b"XAU")

    async def arrived() -> bool:
        return await secure.values("eu-central-1", "instruments", "after-pings") == {b"XAU"}

    await eventually(arrived, 10.0, "the write after the ping flood replicated")


async def test_a_peer_past_its_calls_in_flight_is_refused_while_others_are_served(tmp_path: Any) -> None:
    """The per-connection bound does not stop a peer that opens more connections: the node
    also bounds the calls one peer (one certificate) has in flight, across its connections.
    eu-central-1's key holds replication streams over two connections until the node refuses
    one with RESOURCE_EXHAUSTED; an honest client is served meanwhile, nothing changes, and a
    stream let go makes room again."""
    bound = 6
    cluster = LocalCluster(tmp_path, [REGION, "eu-central-1"])
    cluster.node_overrides["peer_calls_max"] = bound
    await cluster.start_linked()
    try:
        node = cluster.nodes[REGION]
        before = state(cluster)
        channels = [cluster.channel_as_node("eu-central-1", node.address) for _ in range(2)]
        held: list[Any] = []
        try:
            message = ""
            for i in range(bound + 1):
                call = rpb_grpc.ReplicationServiceStub(channels[i % 2]).Replicate(timeout=30)
                try:
                    await asyncio.wait_for(call.wait_for_connection(), 5)
                    # A refused call ends at once; a held one is still waiting for its hello.
                    done = await asyncio.wait_for(asyncio.shield(call.code()), 0.5)
                except TimeoutError:
                    held.append(call)
                    continue
                assert done == grpc.StatusCode.RESOURCE_EXHAUSTED, done
                message = await call.details()
                break
            # The node's own sender to eu-west-1 holds one of the peer's places.
            assert len(held) == bound - 1, len(held)
            assert f"the most one peer may have ({bound})" in message, message
            assert node.metrics.peer_calls_refused._value.get() == 1
            await honest_status(cluster)
            held.pop().cancel()

            async def admitted() -> bool:
                # Once the node has seen the cancel, a new stream is admitted: it waits for its
                # hello instead of ending.
                again = rpb_grpc.ReplicationServiceStub(channels[0]).Replicate(timeout=30)
                held.append(again)
                try:
                    await asyncio.wait_for(asyncio.shield(again.code()), 0.5)
                except TimeoutError:
                    return True
                held.remove(again)
                return False

            await eventually(admitted, 10.0, "a stream admitted once one was let go")
        finally:
            for call in held:
                call.cancel()
            for channel in channels:
                await channel.close()
        assert state(cluster) == before
    finally:
        await cluster.stop()
