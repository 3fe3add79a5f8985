"""Regression: A Put whose subject_jurisdiction is well-formed but not an ISO 3166-1 country ("UK": the
United Kingdom is GB) is answered FAILED_PRECONDITION (PlacementRefused: "this region may not
hold this record", with an empty allowed-regions trailer), not INVALID_ARGUMENT.

node/service.py `_admit_put` validates the code with domicile.model.check_jurisdiction (a regex
only), and the ISO check happens inside the policy decision (domicile/policy/engine.py
`_personal`, rule subject-jurisdiction-invalid), which reports it as a placement refusal. The
input is invalid wherever it is sent (README error table: malformed input is INVALID_ARGUMENT;
FAILED_PRECONDITION means "another region may hold it" and the SDK re-routes on it), and a
lower-case "gb" is INVALID_ARGUMENT, so the same class of mistake gets two different statuses.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.support.cluster import NAMESPACES, LocalCluster
from tests.support.packs import sample_pack

CUSTOMERS = {"name": "customers", "regions": "global", "classification": "personal"}


async def test_an_unassigned_country_code_is_an_invalid_argument(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=[*NAMESPACES, CUSTOMERS])
    await cluster.start()
    try:
        # Control: a malformed code is INVALID_ARGUMENT.
        with pytest.raises(grpc.aio.AioRpcError) as lower:
            await cluster.put(
                "eu-west-1", "customers", "c-1", b"x", subject_id="s-1", subject_jurisdiction="gb"
            )
        assert lower.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A well-formed code ISO does not assign.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cluster.put(
                "eu-west-1", "customers", "c-1", b"x", subject_id="s-1", subject_jurisdiction="UK"
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
            info.value.code(),
            info.value.details(),
        )
    finally:
        await cluster.stop()
