"""The storage message bounds as the node applies them (each handler wrapped once), on a real
grpc.aio server: an answer is encoded once, by the bound, and sent as those bytes; an answer or
a request over its bound is refused with RESOURCE_EXHAUSTED naming the bound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.call_layer import CallLayer
from node.api.limits import MessageBounds, MessageLimits

SERVICE = "test.Storage"
REQUEST_MAX = 600
RESPONSE_MAX = 400


class Served:
    def __init__(self) -> None:
        self.handled = 0
        self.refused: list[tuple[str, str]] = []

    async def echo(self, request: spb.PutRequest, context: Any) -> spb.PutResponse:
        """Answers with a version carrying the request's value: its size follows the value."""
        self.handled += 1
        response = spb.PutResponse(lsn=7, region="eu-west-1", context_token=b"t")
        response.version.value = request.value
        return response


@pytest.fixture
async def served() -> AsyncIterator[tuple[Served, grpc.aio.Channel]]:
    served = Served()
    limits = MessageLimits(
        {SERVICE: MessageBounds(REQUEST_MAX, RESPONSE_MAX)},
        lambda context, action, message: served.refused.append((action, message)),
    )
    layer = CallLayer([limits.wrap])
    layer.add_registered_method_handlers(
        SERVICE,
        {
            "Put": grpc.unary_unary_rpc_method_handler(
                served.echo,
                request_deserializer=spb.PutRequest.FromString,
                response_serializer=spb.PutResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server(handlers=[layer])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield served, channel
    await channel.close()
    await server.stop(None)


def put(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        f"/{SERVICE}/Put",
        request_serializer=spb.PutRequest.SerializeToString,
        response_deserializer=spb.PutResponse.FromString,
    )


async def test_an_answer_within_its_bound_arrives_whole(served: tuple[Served, grpc.aio.Channel]) -> None:
    _, channel = served
    answer = await put(channel)(spb.PutRequest(namespace="ns", key="k", value=b"v" * 100), timeout=10)
    expected = spb.PutResponse(lsn=7, region="eu-west-1", context_token=b"t")
    expected.version.value = b"v" * 100
    assert answer == expected


async def test_an_answer_over_its_bound_is_refused(served: tuple[Served, grpc.aio.Channel]) -> None:
    handled, channel = served
    # A request within its bound whose answer (the value and the answer's own fields) is not.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await put(channel)(spb.PutRequest(value=b"v" * (RESPONSE_MAX - 10)), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"the storage service sends at most {RESPONSE_MAX} bytes per answer" in str(
        refused.value.details()
    )
    assert handled.handled == 1


async def test_a_request_over_its_bound_is_refused_before_the_handler(
    served: tuple[Served, grpc.aio.Channel],
) -> None:
    handled, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await put(channel)(spb.PutRequest(value=b"v" * REQUEST_MAX), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"accepts at most {REQUEST_MAX} bytes per request" in str(refused.value.details())
    assert handled.handled == 0
    assert [action for action, _ in handled.refused] == ["storage.Put"]
