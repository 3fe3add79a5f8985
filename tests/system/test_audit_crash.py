"""kill -9 of a SQLite node at random points while Puts are in flight: every acknowledged write
is in the store after the restart, the audit log holds its entry, and the chain verifies.

A write commits its audit entry with the data (the store's audit outbox, one fsync); the audit
log appends it after the commit, and a start after a crash between the two appends what it
lacks. The kill points are drawn from a seed that the test prints (DOMICILE_CRASH_SEED replays)."""

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

from bench.cluster import SOLO_NAMESPACE, SOLO_REGION, BenchCluster, NodeHandle
from bench.procs import Children
from domicile.audit import StoredEntry, verify_log
from domicile.v1 import storage_node_pb2 as spb

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITERS = 16
ROUNDS = 3
ACKED_PER_ROUND_MAX = 400


def audit_problems(audit_db: Path, acked: list[str]) -> list[str]:
    """What is wrong with the audit log of a node that acknowledged `acked` Puts: a damaged
    chain, or an acknowledged write without its put entry."""
    with sqlite3.connect(audit_db) as conn:
        rows = conn.execute("SELECT seq, body, hash FROM audit ORDER BY seq").fetchall()
    entries = [StoredEntry(int(seq), bytes(body), bytes(h)) for seq, body, h in rows]
    report = verify_log(iter(entries), None)
    problems = [f"chain: {p.kind} at {p.seq}: {p.message}" for p in report.problems]
    put_keys = set()
    for entry in entries:
        body = json.loads(entry.body)
        if body["action"] == "put" and body["decision"] == "allow":
            put_keys.add(body["key"])
    missing = [key for key in acked if key not in put_keys]
    if missing:
        problems.append(f"{len(missing)} acknowledged writes have no audit entry: {missing[:10]}")
    return problems


def test_the_audit_checker_fails_on_a_missing_entry_and_a_broken_chain(tmp_path: Path) -> None:
    """Negative control: the checker of the crash test finds what it looks for."""
    from domicile.audit import AuditEntry, chain_hash

    audit_db = tmp_path / "audit.sqlite3"
    with sqlite3.connect(audit_db) as conn:
        conn.execute("CREATE TABLE audit (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, hash BLOB NOT NULL)")
        prev = bytes(32)
        for seq, key in enumerate(["a", "b", "c"], start=1):
            entry = AuditEntry(0, 1, 1, "eu", "n", "p", "put", SOLO_NAMESPACE, key, decision="allow")
            body = entry.encode(seq=seq)
            prev = chain_hash(prev, body)
            conn.execute("INSERT INTO audit VALUES (?, ?, ?)", (seq, body, prev))
    assert audit_problems(audit_db, ["a", "b", "c"]) == []
    assert any("no audit entry" in p for p in audit_problems(audit_db, ["a", "d"]))
    with sqlite3.connect(audit_db) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 2")
    assert any(p.startswith("chain: missing") for p in audit_problems(audit_db, ["a", "c"]))


async def test_kill_9_during_writes_keeps_every_acknowledged_write_and_its_audit_entry(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("DOMICILE_CRASH_SEED", random.randrange(1 << 32)))
    print(f"crash seed {seed} (DOMICILE_CRASH_SEED={seed} replays the kill points)")
    rng = random.Random(seed)
    logs = tmp_path / "logs"
    logs.mkdir()
    children = Children(logs, REPO_ROOT)
    cluster = BenchCluster(tmp_path, children)
    acked: list[str] = []
    recovered = 0
    err_log = logs / f"node-{SOLO_REGION}.err"
    try:
        await cluster.start_coordinator()
        for round_ in range(ROUNDS):
            node = await cluster.start_node(SOLO_REGION, synchronous="FULL")
            recovered += err_log.read_text(errors="replace").count("commits carried")
            kill_after = len(acked) + rng.randint(1, ACKED_PER_ROUND_MAX)
            stopped: list[grpc.StatusCode] = []

            async def writer(
                w: int,
                node: NodeHandle = node,
                round_: int = round_,
                stopped: list[grpc.StatusCode] = stopped,
            ) -> None:
                for i in range(1_000_000):
                    key = f"r{round_}-w{w}-{i}"
                    try:
                        await node.stub.Put(
                            spb.PutRequest(namespace=SOLO_NAMESPACE, key=key, value=key.encode()), timeout=10
                        )
                    except grpc.aio.AioRpcError as error:
                        stopped.append(error.code())
                        return
                    acked.append(key)

            writers = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
            while len(acked) < kill_after:
                if all(t.done() for t in writers):
                    raise AssertionError(f"writers stopped before the kill: {stopped}")
                await asyncio.sleep(0.001)
            os.kill(children.children[f"node-{node.node_id}"].process.pid, signal.SIGKILL)
            await asyncio.gather(*writers)
            await cluster.stop_node(node.node_id)
            print(f"round {round_}: killed after {len(acked)} acknowledged writes in all")

        again = await cluster.start_node(SOLO_REGION, synchronous="FULL")
        recovered += err_log.read_text(errors="replace").count("commits carried")
        lost = []
        for key in acked:
            got = await again.stub.Get(spb.GetRequest(namespace=SOLO_NAMESPACE, key=key), timeout=10)
            if [v.value for v in got.versions] != [key.encode()]:
                lost.append(key)
        assert lost == [], f"{len(lost)} of {len(acked)} acknowledged writes lost: {lost[:10]}"
        await cluster.stop_node(again.node_id)
        problems = await asyncio.to_thread(audit_problems, again.data_dir / "audit.sqlite3", acked)
        assert problems == [], f"seed {seed}: {problems}"
        print(f"starts that appended entries carried by the store: {recovered}")
    finally:
        await cluster.close()
        await children.stop_all()
