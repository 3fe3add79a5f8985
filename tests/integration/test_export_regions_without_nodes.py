"""Regression: `domicile export` in a cluster whose config lists a region no node serves.

The coordinator's desk holds that a region without a node holds nothing: an erasure does not
wait for it and completes. The exporter reads every configured region instead, fails to find a
node in those without one, marks the export incomplete, exits 2 and leaves the access request
open for good (it becomes overdue and pages), although every region that holds anything
answered."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

from domicile.cli.main import main
from domicile.subjects import RequestStatus
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cpb_grpc
from domicile.wire.subjects import request_from_pb
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack

NAMESPACES = [
    {"name": "customers", "regions": "global", "classification": "personal", "retention_class": "user_data"},
]


async def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(argv)

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def test_an_export_completes_when_every_region_with_a_node_answered(tmp_path: Path) -> None:
    # The cluster config lists us-east-1, eu-west-1, eu-central-1 and ap-northeast-1; only
    # eu-west-1 runs a node.
    cluster = LocalCluster(tmp_path, ["eu-west-1"], pack=sample_pack(), namespaces=NAMESPACES)
    await cluster.start_linked()
    try:
        await cluster.put(
            "eu-west-1", "customers", "ada", b"Ada, Dublin", subject_id="s-ada", subject_jurisdiction="IE"
        )
        # The coordinator's own view: an erasure of another subject needs eu-west-1 only.
        stub = cpb_grpc.CoordinatorServiceStub(cluster.coordinator_channel())
        opened = request_from_pb(
            (
                await stub.EraseSubject(
                    cpb.EraseSubjectRequest(
                        subject_id="s-other", reason="Art. 17", subject_jurisdiction="IE"
                    ),
                    timeout=5,
                )
            ).request
        )
        assert opened.regions_pending == ("eu-west-1",)

        async def erased() -> bool:
            got = await stub.GetSubjectRequest(
                cpb.GetSubjectRequestRequest(request_id=opened.request_id), timeout=5
            )
            return request_from_pb(got.request).status is RequestStatus.COMPLETED

        await eventually(erased, 20.0, "the erasure completed with eu-west-1's receipt")

        out_file = tmp_path / "s-ada.json"
        code, _out, err = await cli(
            ["export", "-s", "s-ada", "-j", "IE", "--out", str(out_file), "--deadline", "3",
             "--coordinator", cluster.coordinator_address, *cluster.cli_args()]
        )  # fmt: skip
        doc = json.loads(out_file.read_text())
        assert [(r["namespace"], r["key"]) for r in doc["records"]] == [("customers", "ada")]
        assert doc["regions_unreachable"] == [], doc["regions_unreachable"]
        assert doc["regions_answered"] == ["eu-west-1"]
        assert sorted(doc["regions_without_nodes"]) == ["ap-northeast-1", "eu-central-1", "us-east-1"]
        assert code == 0, err
    finally:
        await cluster.stop()
