"""The one client code path every figure uses: a grpc.aio channel, a unary call with a
deadline, a protobuf request of the same shape (a Put of `value_bytes`)."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from bench.echo_server import METHOD as ECHO_METHOD
from domicile.identity.credentials import Dialer
from domicile.identity.principal import ExpectedPeer
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc

RPC_DEADLINE_S = 5.0
WARMUP_CALLS = 200

Call = Callable[[int], Awaitable[object]]


def channel(address: str, dialer: Dialer, expected: ExpectedPeer | None = None) -> grpc.aio.Channel:
    """Through the same seam as every daemon and the SDK: mutual TLS, or plaintext when the
    figure is the plaintext comparison (or the bare echo baseline)."""
    return dialer.channel(address, expected)


def put_request(namespace: str, key: str, value: bytes, subject_id: str = "") -> spb.PutRequest:
    return spb.PutRequest(namespace=namespace, key=key, value=value, subject_id=subject_id)


def echo_call(ch: grpc.aio.Channel, namespace: str, key_prefix: str, value: bytes) -> Call:
    echo = ch.unary_unary(
        ECHO_METHOD,
        request_serializer=spb.PutRequest.SerializeToString,
        response_deserializer=spb.PutRequest.FromString,
    )

    async def call(i: int) -> object:
        return await echo(put_request(namespace, f"{key_prefix}-{i}", value), timeout=RPC_DEADLINE_S)

    return call


def put_call(ch: grpc.aio.Channel, namespace: str, key_prefix: str, value: bytes, subjects: int = 0) -> Call:
    """Puts key_prefix-i; with `subjects`, about one of that many data subjects in turn, so the
    values are encrypted at rest under per-subject keys (created on each subject's first write)."""
    stub = spb_grpc.StorageNodeServiceStub(ch)

    async def call(i: int) -> object:
        subject = f"bench-subject-{i % subjects}" if subjects else ""
        return await stub.Put(
            put_request(namespace, f"{key_prefix}-{i}", value, subject), timeout=RPC_DEADLINE_S
        )

    return call


def put_batch_call(ch: grpc.aio.Channel, namespace: str, key_prefix: str, value: bytes, records: int) -> Call:
    """PutBatch of `records` keys key_prefix-i-0 .. key_prefix-i-(records-1); a refused record
    fails the call's figure like a failed Put would."""
    stub = spb_grpc.StorageNodeServiceStub(ch)

    async def call(i: int) -> object:
        request = spb.PutBatchRequest(
            puts=[put_request(namespace, f"{key_prefix}-{i}-{j}", value) for j in range(records)]
        )
        response: spb.PutBatchResponse = await stub.PutBatch(request, timeout=RPC_DEADLINE_S)
        refused = [r for r in response.results if r.code != 0]
        if refused:
            raise RuntimeError(f"{len(refused)} of {records} records refused: {refused[0].message}")
        return response

    return call


def get_call(ch: grpc.aio.Channel, namespace: str, keys: list[str], pick: Callable[[], int]) -> Call:
    stub = spb_grpc.StorageNodeServiceStub(ch)

    async def call(i: int) -> object:
        key = keys[pick()]
        response: spb.GetResponse = await stub.Get(
            spb.GetRequest(namespace=namespace, key=key), timeout=RPC_DEADLINE_S
        )
        if not response.found:
            raise RuntimeError(f"pre-loaded key {key!r} was not found; the Get figure would be wrong")
        return response

    return call


async def sequential_ms(call: Call, samples: int, warmup: int | None = None) -> list[float]:
    """Latency of `samples` calls made one after another (after `warmup` unmeasured ones: by
    default WARMUP_CALLS, but never more than are measured, so that a short run stays short)."""
    if warmup is None:
        warmup = min(WARMUP_CALLS, samples)
    for i in range(warmup):
        await call(-1 - i)
    latencies: list[float] = []
    for i in range(samples):
        started = time.perf_counter_ns()
        await call(i)
        latencies.append((time.perf_counter_ns() - started) / 1e6)
    return latencies


async def interleaved_ms(
    calls: Sequence[Call], samples: int, rng: random.Random, warmup: int | None = None, block: int = 1
) -> list[list[float]]:
    """Latencies of `samples` calls of each of `calls`, made in turn: each round makes `block`
    calls of each, one kind after the other, in an order drawn anew for every round (a, b, b,
    a, ...). The figure and its baseline then meet the same moments of a shared machine, where
    alternating halves can give a burst of other guests' work (seconds long) to one of them
    alone. A block of a few tens of calls keeps each server's caches as warm as a run of its own
    calls does, and is still far shorter than such a burst. The warm-up calls are made in turn
    too."""
    if block < 1:
        raise ValueError(f"block must be at least 1, not {block}")
    if warmup is None:
        warmup = min(WARMUP_CALLS, samples)
    order = list(range(len(calls)))
    for i in range(warmup):
        for which in order:
            await calls[which](-1 - i)
    latencies: list[list[float]] = [[] for _ in calls]
    for first in range(0, samples, block):
        rng.shuffle(order)
        for which in order:
            call, out = calls[which], latencies[which]
            for i in range(first, min(first + block, samples)):
                started = time.perf_counter_ns()
                await call(i)
                out.append((time.perf_counter_ns() - started) / 1e6)
    return latencies
