"""HeadExporter.offer from the audit writer's thread: the newest head wins, and the event loop
is woken only while the exporter waits for a head."""

from __future__ import annotations

import asyncio
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.audit import GENESIS, SignedHead, sign_head
from domicile.identity.credentials import Dialer
from domicile.retry import BackoffPolicy
from node.compliance.head_export import HeadExporter
from node.metrics import NodeMetrics

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
REGION = "eu-west-1"
NODE = "eu-west-1-a"


def head(size: int) -> SignedHead:
    last = GENESIS if size == 0 else bytes([size % 256]) * 32
    return sign_head(KEY, region=REGION, node_id=NODE, size=size, head=last, time_ms=size)


def exporter() -> HeadExporter:
    return HeadExporter(
        coordinator="localhost:1",
        dialer=Dialer.plaintext(),
        metrics=NodeMetrics(NODE, REGION),
        backoff=BackoffPolicy(),
        rpc_deadline_s=1.0,
    )


def offer_from_a_thread(ex: HeadExporter, *heads: SignedHead) -> None:
    thread = threading.Thread(target=lambda: [ex.offer(h) for h in heads])
    thread.start()
    thread.join()


async def test_heads_offered_while_nobody_waits_leave_the_newest_without_waking() -> None:
    ex = exporter()
    offer_from_a_thread(ex, head(3), head(5), head(4))  # an older head never replaces a newer one
    assert not ex._wake.is_set()
    assert (await asyncio.wait_for(ex._next(), 5)).size == 5


async def test_a_head_offered_from_another_thread_wakes_a_waiting_exporter() -> None:
    ex = exporter()
    waiting = asyncio.create_task(ex._next())
    await asyncio.sleep(0)  # the exporter waits now
    assert not waiting.done()
    offer_from_a_thread(ex, head(7))
    assert (await asyncio.wait_for(waiting, 5)).size == 7
    # Offered from the loop itself (a retry) it is taken the same way.
    ex.offer(head(8))
    assert (await asyncio.wait_for(ex._next(), 5)).size == 8


async def test_a_size_offered_is_signed_only_when_the_exporter_takes_it() -> None:
    signed: list[int] = []
    durable = [5]

    def sign() -> SignedHead:
        signed.append(durable[0])
        return head(durable[0])

    ex = exporter()
    ex.sign = sign
    thread = threading.Thread(target=lambda: [ex.offer_grown(n) for n in (1, 2, 3, 5)])
    thread.start()
    thread.join()
    assert signed == []  # four batches, no signature yet
    taken = await asyncio.wait_for(ex._next(), 5)
    assert (taken.size, signed) == (5, [5])
    # An older size never replaces a newer head, signed or not.
    ex.offer(head(9))
    ex.offer_grown(7)
    assert (await asyncio.wait_for(ex._next(), 5)).size == 9
    assert signed == [5]


async def test_a_failed_signature_is_retried_and_never_ends_the_exporter() -> None:
    calls: list[int] = []

    def sign() -> SignedHead:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the key is busy")
        return head(4)

    ex = exporter()
    ex.sign = sign
    ex.interval_s = 0.01
    ex.offer_grown(4)
    assert (await asyncio.wait_for(ex._next(), 5)).size == 4
    assert len(calls) == 2


async def test_a_closing_head_the_coordinator_cannot_take_is_reported_not_raised() -> None:
    # Nothing listens on the exporter's coordinator address: the stop goes on.
    ex = exporter()
    assert await asyncio.wait_for(ex.export_last(head(3)), 10) is False
    assert ex.exported_size == 0


async def test_a_closing_head_already_exported_is_not_sent_again() -> None:
    ex = exporter()
    ex.exported_size = 5
    # Nothing listens: a send would fail, so True means nothing was sent.
    assert await ex.export_last(head(5)) is True
