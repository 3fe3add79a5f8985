"""`domicile up --tiers --nodes-per-region 2`: the cluster on the MongoDB engine, over a
SecantusDB it starts and stops itself, with two daemons per region sharing the region's database,
every region's read cache in a database of its own of one redis-server it also starts, and every
region's backups in a bucket of its own of one S3 server (SeaweedFS) it starts as well."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from typing import Any

import boto3
import pymongo
import pytest
import redis

from domicile.ports import free_port_run
from domicile.s3_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
from tests.system.test_up import (
    ROOT,
    STARTUP_S,
    UpProcess,
    domicile_command,
    eventually,
    pids_using,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


# Two regions keep it to seven processes on a two-core machine.
CLUSTER = """
policy_version: tiers-test-1
regions:
  - {name: eu-west-1, country: IE, jurisdiction: EU}
  - {name: eu-central-1, country: DE, jurisdiction: EU}
namespaces:
  - {name: instruments, regions: global, conflict_mode: lww, classification: public, owner: market-data}
"""


def test_up_tiers_runs_two_daemons_per_region_on_mongodb_and_stops_its_server(tmp_path: Any) -> None:
    seed = random.randrange(1 << 30)
    print(f"port seed={seed}")
    rng = random.Random(seed)
    # The coordinator, 2 x two daemons, then SecantusDB, redis-server and the S3 gateway.
    base = free_port_run(8, rng=rng)
    data_dir = tmp_path / "up"
    config = tmp_path / "cluster.yaml"
    config.write_text(CLUSTER)
    process = subprocess.Popen(
        [*domicile_command(), "up", "--tiers", "--nodes-per-region", "2", "--config", str(config),
         "--data-dir", str(data_dir), "--base-port", str(base), "--metrics-base-port", "0",
         "--startup-timeout", str(STARTUP_S)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    up = UpProcess(process, data_dir, f"127.0.0.1:{base}")
    threading.Thread(target=up.pump, daemon=True).start()
    mongodb = f"mongodb://127.0.0.1:{base + 5}/"
    try:
        assert up.wait_for_line("mongodb: ", STARTUP_S + 30).startswith(f"mongodb: 127.0.0.1:{base + 5}")
        assert up.wait_for_line("redis: ", 5).startswith(f"redis: 127.0.0.1:{base + 6}")
        assert up.wait_for_line("s3: ", 5).startswith(f"s3: 127.0.0.1:{base + 7}")
        up.wait_for_line("ready:", 30)
        nodes = {n["node_id"]: n for n in up.status()["nodes"]}
        assert {"eu-west-1", "eu-west-1-2"} <= set(nodes) and len(nodes) == 4
        # Each command's client starts its turns among eu-west-1's daemons at random.
        up.put("instruments", "tiers-0", "bob", "--region", "eu-west-1")
        up.put("instruments", "tiers-1", "ada", "--region", "eu-west-1")
        eventually(
            lambda: up.sees("instruments", "tiers-1", "ada", "eu-central-1"), "tiers-1 in eu-central-1"
        )
        client: pymongo.MongoClient[dict[str, Any]]
        with pymongo.MongoClient(mongodb, serverSelectionTimeoutMS=5000) as client:
            stored = client["domicile_eu_west_1"]["key_states"].find_one(
                {"ns": "instruments", "k": "tiers-1"}
            )
            replicated = client["domicile_eu_central_1"]["key_states"].find_one({"k": "tiers-1"})
        assert stored is not None and stored["live"] is True
        assert replicated is not None
        assert not (data_dir / "eu-west-1" / "store.sqlite3").exists()
        # Each region's daemons cache in the region's own Redis database, which they claimed.
        for number, region in enumerate(("eu-west-1", "eu-central-1")):
            cache = redis.Redis(host="127.0.0.1", port=base + 6, db=number)
            try:
                assert cache.get(b"domicile:region") == region.encode()
                nodes_caching = {k.split(b":")[1] for k in cache.scan_iter(match=b"domicile:*:*:hw")}
                assert nodes_caching == {region.encode(), f"{region}-2".encode()}, nodes_caching
            finally:
                cache.close()
        # Each region's daemons back the region up into its own bucket.
        s3 = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{base + 7}", region_name="us-east-1",
            aws_access_key_id=LOCAL_ACCESS_KEY, aws_secret_access_key=LOCAL_SECRET_KEY,
        )  # fmt: skip
        for region in ("eu-west-1", "eu-central-1"):

            def backed_up(region: str = region) -> bool:
                try:
                    listed = s3.list_objects_v2(Bucket=f"domicile-backup-{region}")
                except s3.exceptions.NoSuchBucket:
                    return False
                return any("manifest" in o["Key"] for o in listed.get("Contents", []))

            eventually(backed_up, f"a backup manifest in {region}'s bucket")

        process.send_signal(signal.SIGINT)
        assert process.wait(90) == 0, "\n".join(up.output)
        assert pids_using(data_dir) == []  # SecantusDB stopped with the rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in pids_using(data_dir):
            os.kill(pid, signal.SIGKILL)
