"""Regression: Delete with a request id: the extra per-facts tombstones (node/service.py delete,
_other_deleted_facts) are committed *before* the engine looks at the request id, and they carry
no request id themselves. So

- a Delete whose request id was already used for a different write of the key is refused
  ("Nothing was written") -- yet the key's versions are gone;
- a retry of a Delete that already succeeded (which must be answered from the first attempt and
  write nothing) deletes siblings written since.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from domicile import errors
from node.service import DeleteCommand, PutCommand
from tests.support.cluster import LocalCluster

NAMESPACES = [
    {"name": "customers", "regions": "global", "classification": "personal", "retention_class": "user_data"},
]


async def _put(service, key: str, value: bytes, subject: str, request_id: str = "") -> None:
    await service.put(
        PutCommand(
            "customers",
            key,
            value,
            subject_id=subject,
            subject_jurisdiction="DE",
            principal="tester",
            request_id=request_id,
        )
    )


async def test_a_delete_refused_for_a_reused_request_id_deletes_nothing(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"], namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        service = cluster.nodes["eu-west-1"].service
        await _put(service, "k", b"about a", "s-a", request_id="req-1")
        await _put(service, "k", b"about b", "s-b")  # a sibling (no context)
        assert await cluster.values("eu-west-1", "customers", "k") == {b"about a", b"about b"}
        # The client reuses req-1 for a Delete: refused, "Nothing was written".
        with pytest.raises(errors.FailedPrecondition, match="Nothing was written"):
            await service.delete(DeleteCommand("customers", "k", principal="tester", request_id="req-1"))
        assert await cluster.values("eu-west-1", "customers", "k") == {b"about a", b"about b"}
    finally:
        await cluster.stop()


async def test_a_retried_delete_writes_nothing(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"], namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        service = cluster.nodes["eu-west-1"].service
        await _put(service, "k", b"first", "s-a")
        first = await service.delete(DeleteCommand("customers", "k", principal="tester", request_id="del-1"))
        # Later writes to the key, about two subjects (concurrent siblings).
        await _put(service, "k", b"about b", "s-b")
        await _put(service, "k", b"about c", "s-c")
        assert await cluster.values("eu-west-1", "customers", "k") == {b"about b", b"about c"}
        # The client's retry of its Delete (its first answer was lost) is answered from the first
        # attempt and must write nothing.
        again = await service.delete(DeleteCommand("customers", "k", principal="tester", request_id="del-1"))
        assert again.replayed
        assert again.mutation.version.dot == first.mutation.version.dot
        assert await cluster.values("eu-west-1", "customers", "k") == {b"about b", b"about c"}
    finally:
        await cluster.stop()
