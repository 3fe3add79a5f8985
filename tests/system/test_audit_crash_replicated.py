"""kill -9 of a replica at random points while a source's writes stream to it: after the restarts
every write is in the replica, its audit log holds a replicate_receive entry for each, and the
chain verifies.

A replicated apply commits its audit entries with the data (the store's audit_received table,
one fsync per applied batch); the audit log appends them after the commit, and a start after a
crash between the two appends what it lacks. The kill points are drawn from a seed that the test
prints (DOMICILE_CRASH_SEED replays)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
from pathlib import Path

import grpc
import pytest
import yaml

from bench.cluster import BenchCluster, NodeHandle, wait_caught_up, wait_linked
from bench.procs import Children
from bench.replication import NEAR, PAIR_NS, SOURCE, cluster_config
from domicile.audit import StoredEntry, verify_log
from domicile.v1 import storage_node_pb2 as spb

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITERS = 4
# Each writer rests this long between writes: a stream, not a flood the replica must catch up on.
PAUSE_S = 0.005
ROUNDS = 3
APPLIED_PER_ROUND_MAX = 300


def received_problems(audit_db: Path, keys: list[str]) -> list[str]:
    """What is wrong with the audit log of a replica that applied `keys`: a damaged chain, or an
    applied write without its replicate_receive entry."""
    with sqlite3.connect(audit_db) as conn:
        rows = conn.execute("SELECT seq, body, hash FROM audit ORDER BY seq").fetchall()
    entries = [StoredEntry(int(seq), bytes(body), bytes(h)) for seq, body, h in rows]
    report = verify_log(iter(entries), None)
    problems = [f"chain: {p.kind} at {p.seq}: {p.message}" for p in report.problems]
    received = set()
    for entry in entries:
        body = json.loads(entry.body)
        if body["action"] == "replicate_receive" and body["decision"] == "allow":
            received.add(body["key"])
    missing = [key for key in keys if key not in received]
    if missing:
        problems.append(f"{len(missing)} applied writes have no replicate_receive entry: {missing[:10]}")
    return problems


def test_the_received_checker_fails_on_a_missing_entry_and_a_broken_chain(tmp_path: Path) -> None:
    """Negative control: the checker of the crash test finds what it looks for."""
    from domicile.audit import AuditEntry, chain_hash

    audit_db = tmp_path / "audit.sqlite3"
    with sqlite3.connect(audit_db) as conn:
        conn.execute("CREATE TABLE audit (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, hash BLOB NOT NULL)")
        prev = bytes(32)
        for seq, key in enumerate(["a", "b", "c"], start=1):
            entry = AuditEntry(
                0, 1, 1, "eu", "n", "node:s", "replicate_receive", PAIR_NS, key, decision="allow"
            )
            body = entry.encode(seq=seq)
            prev = chain_hash(prev, body)
            conn.execute("INSERT INTO audit VALUES (?, ?, ?)", (seq, body, prev))
    assert received_problems(audit_db, ["a", "b", "c"]) == []
    assert any("no replicate_receive entry" in p for p in received_problems(audit_db, ["a", "d"]))
    with sqlite3.connect(audit_db) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 2")
    assert any(p.startswith("chain: missing") for p in received_problems(audit_db, ["a", "c"]))


async def applied_total(node: NodeHandle) -> float:
    text = await node.scrape()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("domicile_replication_applied_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_kill_9_of_a_replica_keeps_every_applied_write_and_its_audit_entry(tmp_path: Path) -> None:
    seed = int(os.environ.get("DOMICILE_CRASH_SEED", random.randrange(1 << 32)))
    print(f"crash seed {seed} (DOMICILE_CRASH_SEED={seed} replays the kill points)")
    rng = random.Random(seed)
    logs = tmp_path / "logs"
    logs.mkdir()
    children = Children(logs, REPO_ROOT)
    cluster = BenchCluster(tmp_path, children)
    config = cluster_config()
    config["regions"] = [r for r in config["regions"] if r["name"] in (SOURCE, NEAR)]
    config["namespaces"] = [ns for ns in config["namespaces"] if ns["name"] == PAIR_NS]
    cluster.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    acked: list[str] = []
    recovered = 0
    err_log = logs / f"node-{NEAR}.err"
    try:
        await cluster.start_coordinator()
        source = await cluster.start_node(SOURCE, synchronous="FULL")
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            for i in range(1_000_000):
                if stop.is_set():
                    return
                key = f"w{w}-{i}"
                try:
                    await source.stub.Put(
                        spb.PutRequest(namespace=PAIR_NS, key=key, value=key.encode()), timeout=10
                    )
                except grpc.aio.AioRpcError as error:
                    raise AssertionError(f"the source refused a write: {error.code()}") from error
                acked.append(key)
                await asyncio.sleep(PAUSE_S)

        writers = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
        for round_ in range(ROUNDS):
            target = await cluster.start_node(NEAR, synchronous="FULL")
            recovered += err_log.read_text(errors="replace").count("replicated applies carried")
            await wait_linked(source, target)
            kill_after = rng.randint(1, APPLIED_PER_ROUND_MAX)
            while await applied_total(target) < kill_after:
                if any(t.done() for t in writers):
                    await asyncio.gather(*writers)
                await asyncio.sleep(0.01)
            os.kill(children.children[f"node-{target.node_id}"].process.pid, signal.SIGKILL)
            await cluster.stop_node(target.node_id)
            print(f"round {round_}: replica killed after {kill_after}+ applied; {len(acked)} written")
        stop.set()
        await asyncio.gather(*writers)

        again = await cluster.start_node(NEAR, synchronous="FULL")
        recovered += err_log.read_text(errors="replace").count("replicated applies carried")
        await wait_caught_up(source, again)

        async def replicated(key: str) -> bool:
            got = await again.stub.Get(spb.GetRequest(namespace=PAIR_NS, key=key), timeout=10)
            return [v.value for v in got.versions] == [key.encode()]

        missing = []
        for i in range(0, len(acked), 64):
            chunk = acked[i : i + 64]
            found = await asyncio.gather(*(replicated(key) for key in chunk))
            missing += [key for key, ok in zip(chunk, found, strict=True) if not ok]
        assert missing == [], f"{len(missing)} of {len(acked)} writes not replicated: {missing[:10]}"
        await cluster.stop_node(again.node_id)
        problems = await asyncio.to_thread(received_problems, again.data_dir / "audit.sqlite3", acked)
        assert problems == [], f"seed {seed}: {problems}"
        print(f"starts that appended entries carried by replicated applies: {recovered}")
    finally:
        await cluster.close()
        await children.stop_all()
