"""A Get's cache lookup is sent as its request is decoded (node/api/read_ahead.py), on a real
grpc.aio server with the node's call-layer wrappers: before the per-peer bound and the handler
run, handed to the handler with the request, and dropped unseen whenever the handler does not
take its reply, including when an inner wrapper refuses the call before the handler runs. A
request refused for its size sends none, and no other method is touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.call_layer import CallLayer
from domicile.wire.peer_limits import PeerConcurrency
from node.api.limits import MessageBounds, MessageLimits
from node.api.read_ahead import GET_METHOD, AheadGet, GetReadAhead
from node.cache.coherence import Ticket
from node.cache.read_cache import ReadAhead
from node.cache.resp import SentGet

SERVICE = "domicile.v1.StorageNodeService"
REQUEST_BYTES_MAX = 256


class Sender:
    """Sends nothing to Redis: each lookup is a real ReadAhead whose reply never comes, so a
    dropped one shows as its reply's future cancelled."""

    def __init__(self, *, send: bool = True) -> None:
        self.send = send
        self.events: list[str] = []
        self.sent: list[ReadAhead] = []

    def read_ahead(self, namespace: str, key: str) -> ReadAhead | None:
        self.events.append(f"sent {namespace}/{key}" if self.send else "not sent")
        if not self.send:
            return None
        waiter = asyncio.get_running_loop().create_future()
        ahead = ReadAhead((namespace, key), Ticket("g"), SentGet(waiter))
        self.sent.append(ahead)
        return ahead


class Served:
    def __init__(self, sender: Sender, channel: grpc.aio.Channel) -> None:
        self.sender = sender
        self.channel = channel
        self.seen: list[object] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.hold = False

    async def get(self, request: Any, context: Any) -> spb.GetResponse:
        self.sender.events.append("handler")
        self.seen.append(request)
        self.entered.set()
        if self.hold:
            await self.release.wait()
        return spb.GetResponse(found=True)

    async def put(self, request: Any, context: Any) -> spb.PutResponse:
        self.seen.append(request)
        return spb.PutResponse()

    async def call_get(self, namespace: str = "ns", key: str = "k") -> spb.GetResponse:
        call = self.channel.unary_unary(
            GET_METHOD,
            request_serializer=spb.GetRequest.SerializeToString,
            response_deserializer=spb.GetResponse.FromString,
        )
        response: spb.GetResponse = await call(spb.GetRequest(namespace=namespace, key=key), timeout=5)
        return response


async def serve(sender: Sender) -> AsyncIterator[Served]:
    # The node's wrappers in the node's order (node/daemon.py), with a per-peer bound of one call.
    layer = CallLayer(
        [
            GetReadAhead(sender).wrap,
            PeerConcurrency(1).wrap,
            MessageLimits({SERVICE: MessageBounds(REQUEST_BYTES_MAX, 1 << 20)}).wrap,
        ]
    )
    server = grpc.aio.server(handlers=[layer])
    port = server.add_insecure_port("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    served = Served(sender, channel)
    layer.add_registered_method_handlers(
        SERVICE,
        {
            "Get": grpc.unary_unary_rpc_method_handler(
                served.get,
                request_deserializer=spb.GetRequest.FromString,
                response_serializer=spb.GetResponse.SerializeToString,
            ),
            "Put": grpc.unary_unary_rpc_method_handler(
                served.put,
                request_deserializer=spb.PutRequest.FromString,
                response_serializer=spb.PutResponse.SerializeToString,
            ),
        },
    )
    await server.start()
    try:
        yield served
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async for s in serve(Sender()):
        yield s


@pytest.fixture
async def unsent() -> AsyncIterator[Served]:
    async for s in serve(Sender(send=False)):
        yield s


def dropped(ahead: ReadAhead) -> bool:
    return ahead.sent._waiter.cancelled()


async def dropped_soon(ahead: ReadAhead, timeout_s: float = 5.0) -> bool:
    """Whether the lookup is dropped within `timeout_s`. A refusal by context.abort sends its
    status before it raises, so the caller can hear it before the wrapper's `finally` has run."""
    await asyncio.wait([ahead.sent._waiter], timeout=timeout_s)  # done once cancelled
    return dropped(ahead)


async def test_the_lookup_is_sent_before_the_handler_runs_and_dropped_after(served: Served) -> None:
    assert (await served.call_get("customers", "anna")).found
    assert served.sender.events == ["sent customers/anna", "handler"]
    (seen,) = served.seen
    assert isinstance(seen, AheadGet)
    assert (seen.request.namespace, seen.request.key) == ("customers", "anna")
    assert seen.ahead is served.sender.sent[0]
    # The handler did not take the reply: the wrapper gave it up.
    assert dropped(seen.ahead)


async def test_a_call_refused_before_the_handler_drops_its_lookup(served: Served) -> None:
    served.hold = True
    first = asyncio.ensure_future(served.call_get("ns", "first"))
    await served.entered.wait()
    # The peer's one call is in flight: the per-peer bound refuses the next, inside the wrapper.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.call_get("ns", "second")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.sender.events == ["sent ns/first", "handler", "sent ns/second"]
    assert await dropped_soon(served.sender.sent[1])
    assert not dropped(served.sender.sent[0])  # still in its handler
    served.release.set()
    assert (await first).found
    assert dropped(served.sender.sent[0])


async def test_a_request_refused_for_its_size_sends_no_lookup(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.call_get("ns", "k" * (2 * REQUEST_BYTES_MAX))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.sender.events == []
    assert served.seen == []


async def test_without_a_lookup_the_handler_gets_the_request(unsent: Served) -> None:
    assert (await unsent.call_get("ns", "k")).found
    assert unsent.sender.events == ["not sent", "handler"]
    (seen,) = unsent.seen
    assert isinstance(seen, spb.GetRequest) and seen.key == "k"


async def test_other_methods_send_nothing(served: Served) -> None:
    call = served.channel.unary_unary(
        f"/{SERVICE}/Put",
        request_serializer=spb.PutRequest.SerializeToString,
        response_deserializer=spb.PutResponse.FromString,
    )
    await call(spb.PutRequest(namespace="ns", key="k"), timeout=5)
    assert served.sender.events == []
    (seen,) = served.seen
    assert isinstance(seen, spb.PutRequest)
