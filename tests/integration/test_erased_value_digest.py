"""Regression: the request mark's digest (node/engine/base.py request_digest, stored in the key
state) was an unkeyed hash of the plaintext value of a subject's record, kept at rest beside the
value sealed under the subject's data key and kept after an erasure destroyed that key. Anyone
holding the store file or a backup could confirm a guess of the erased value by hashing it: the
erasure no longer hid a low-entropy value."""

from __future__ import annotations

import asyncio

from domicile.model import Classification
from domicile.subjects import ErasureOrder
from node.engine.base import request_digest
from tests.support.cluster import LocalCluster

SUBJECT = "subject-digest-1"


async def test_an_erased_value_cannot_be_confirmed_from_the_store(eu_node: LocalCluster) -> None:
    node = eu_node.nodes["eu-west-1"]
    await eu_node.put(
        "eu-west-1",
        "customers_eu",
        "c-1",
        b"diagnosis: positive",
        subject_id=SUBJECT,
        subject_jurisdiction="DE",
        request_id="req-digest-1",
    )
    topology = node.view.topology
    await node.eraser.erase(
        ErasureOrder("erase-digest-1", SUBJECT, 0, ("eu-west-1",)), topology.cluster, topology.holds
    )
    assert await eu_node.values("eu-west-1", "customers_eu", "c-1") == set()

    state = await asyncio.to_thread(node.engine.get, "customers_eu", "c-1")
    assert state is not None
    stored = {m.digest for m in state.requests if m.digest}

    def guess(value: bytes) -> bytes:
        return request_digest(
            tombstone=False,
            value=value,
            content_type="",
            subject_id=SUBJECT,
            subject_jurisdiction="DE",
            classification=int(Classification.UNSPECIFIED),
        )

    # Two guesses of the same length (the sealed value's size tells its length anyway): the store
    # must not tell the erased value from the other.
    told_apart = (guess(b"diagnosis: positive") in stored) != (guess(b"diagnosis: negative") in stored)
    assert not told_apart, (
        "the subject's data key is destroyed, yet the key state still holds a digest that tells the "
        "erased value from another of its length"
    )
