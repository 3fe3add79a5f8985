"""Randomized workload against a four-region cluster enforcing a policy pack that changes
(loosens) between phases: many subjects in many jurisdictions, every classification, writes,
deletes and reads aimed at random regions, replication throughout.

After each phase, with replication caught up:
- the compliance scanner finds no record copy the policy in force does not allow, anywhere;
- every refusal a client saw is in the audit trail of the region that refused it;
- every refusing decision any node counted is in that node's audit trail, and each trail
  verifies against its signed head;
- no target had to refuse a replicated record (the sources filtered them all).

Tightenings are covered by test_compliance.py (the scanner must report those copies, so "zero
violations" only holds while the policy loosens). Prints its seed; DOMICILE_SEED=<n> replays the
same operations (the interleaving of concurrent operations across regions still varies).

The second run does the same under faults: while the operations run, nodes are cut off from
their peers (a proxy in front of each node drops and refuses replication connections) and
stopped and restarted (every phase gets both, while its operations run: they wait at drawn
points for the faults to start); operations that meet a stopped node fail as unavailable, and
the checks run once everything is healed. DOMICILE_PROPERTY_OPS sets the operations per phase of the first
run; the run under faults does half as many per phase (a long run under faults:
DOMICILE_PROPERTY_OPS=66668 -k partitions gives three phases of 33,334, 100,002 operations).
Long runs print their progress every 2,000 operations.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from domicile.audit import AuditEntry, verify_log
from domicile.model import Classification
from domicile.v1 import storage_node_pb2 as spb
from node.daemon import Node
from tests.support.cluster import LocalCluster, eventually
from tests.support.packs import sample_pack, set_adequacy, with_fact

REGIONS = ["us-east-1", "eu-west-1", "eu-central-1", "ap-northeast-1"]
NAMESPACES = [
    {"name": "instruments", "regions": "global", "conflict_mode": "lww", "classification": "public"},
    {"name": "customers", "regions": "global", "classification": "personal"},
    {"name": "records", "regions": "global", "classification": "public"},
    {"name": "records_eu", "regions": ["eu-west-1", "eu-central-1"], "classification": "internal"},
]
# EEA, US with and without a state law, Japan, Brazil, China, Russia, the UK, Switzerland,
# India, Korea, a jurisdiction no law in the pack covers (SG, refused by
# `unlisted_jurisdictions: refuse`), and no jurisdiction at all.
JURISDICTIONS = [
    "DE",
    "FR",
    "IE",
    "NO",
    "US",
    "US-CA",
    "US-NY",
    "JP",
    "BR",
    "CN",
    "RU",
    "GB",
    "CH",
    "IN",
    "KR",
    "SG",
    "",
]
SUBJECTS = 40
KEYS_PER_SUBJECT = 3
OPS_PER_PHASE = int(os.environ.get("DOMICILE_PROPERTY_OPS", "300"))
CONCURRENCY = 8
# Progress lines every this many rounds of CONCURRENCY operations (2,000 operations).
PROGRESS_EVERY = 250
# What a put refused for the namespace's siblings_max says (node/engine/core.py).
SIBLING_CAP = "past the namespace's siblings_max"
# What a call to a node that is stopped, restarting or cut off may get (a node that stops
# cancels the calls it is serving).
UNAVAILABLE_UNDER_FAULTS = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)
DPF = ["destinations", "us-east-1", "recipient", "dpf_certified"]


def phases() -> list[dict[str, Any]]:
    """Loosening packs: no DPF and no Japanese adequacy; then Japan adequate; then the sample."""
    strict = with_fact(sample_pack(), "2026-11-27.p0", DPF, False)
    set_adequacy(strict, "gdpr", "JP", False)
    japan = with_fact(sample_pack(), "2026-11-27.p1", DPF, False)
    return [strict, japan, with_fact(sample_pack(), "2026-11-27.p2", DPF, True)]


@dataclass(frozen=True)
class Op:
    kind: str  # put, delete, get, scan
    region: str
    namespace: str
    key: str = ""
    subject: str = ""
    jurisdiction: str = ""
    classification: Classification = Classification.UNSPECIFIED


def make_ops(rng: random.Random, count: int, subjects: list[tuple[str, str]]) -> list[Op]:
    ops = []
    classes = list(Classification)
    for _ in range(count):
        region = rng.choice(REGIONS)
        namespace = rng.choices([n["name"] for n in NAMESPACES], weights=[1, 5, 4, 2])[0]
        subject, jurisdiction = rng.choice(subjects)
        key = f"{subject}-{rng.randrange(KEYS_PER_SUBJECT)}"
        if namespace == "instruments":
            subject, jurisdiction, key = "", "", f"isin-{rng.randrange(20)}"
        roll = rng.random()
        kind = "put" if roll < 0.55 else "delete" if roll < 0.65 else "get" if roll < 0.95 else "scan"
        classification = rng.choice(classes) if namespace == "records" else Classification.UNSPECIFIED
        ops.append(Op(kind, region, namespace, key, subject, jurisdiction, classification))
    return ops


class Workload:
    def __init__(self, cluster: LocalCluster, faults: bool = False) -> None:
        self.cluster = cluster
        self.faults = faults
        # (region, audited action, key) -> refusals a client saw
        self.refused: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()

    async def run(self, op: Op) -> None:
        stub = self.cluster.stub(op.region)
        try:
            if op.kind == "put":
                await stub.Put(
                    spb.PutRequest(
                        namespace=op.namespace, key=op.key, value=os.urandom(16), subject_id=op.subject,
                        subject_jurisdiction=op.jurisdiction, classification=int(op.classification),  # type: ignore[arg-type]
                    ),
                    timeout=10,
                )  # fmt: skip
            elif op.kind == "delete":
                await stub.Delete(
                    spb.DeleteRequest(
                        namespace=op.namespace,
                        key=op.key,
                        subject_id=op.subject,
                        subject_jurisdiction=op.jurisdiction,
                    ),
                    timeout=10,
                )
            elif op.kind == "get":
                await stub.Get(spb.GetRequest(namespace=op.namespace, key=op.key), timeout=10)
            else:
                await stub.Scan(spb.ScanRequest(namespace=op.namespace, page_size=1000), timeout=10)
            self.outcomes[f"{op.kind} ok"] += 1
        except grpc.aio.AioRpcError as exc:
            if self.faults and exc.code() in UNAVAILABLE_UNDER_FAULTS:
                self.outcomes[f"{op.kind} unavailable"] += 1
                return
            if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION:
                raise AssertionError(f"{op} failed with {exc.code().name}: {exc.details()}") from None
            if SIBLING_CAP in (exc.details() or ""):
                # Blind puts pile up siblings; past the namespace's cap a put is refused, which
                # is no residency decision (and not audited as one).
                self.outcomes[f"{op.kind} over the sibling cap"] += 1
                return
            self.outcomes[f"{op.kind} refused"] += 1
            action = {"put": "put", "delete": "delete", "get": "read"}[op.kind]
            self.refused[(op.region, action, op.key)] += 1

    async def run_all(self, ops: list[Op], hold: Callable[[int], Awaitable[None]] | None = None) -> None:
        """`hold(i)` is awaited before the operations from the i-th on are started."""
        for i in range(0, len(ops), CONCURRENCY):
            if hold is not None:
                await hold(i)
            await asyncio.gather(*(self.run(op) for op in ops[i : i + CONCURRENCY]))
            if (i // CONCURRENCY + 1) % PROGRESS_EVERY == 0:
                # A long run says how far it got (and at what pace) while it runs.
                print(f"{time.strftime('%H:%M:%S')} operations {sum(self.outcomes.values())}", flush=True)


async def caught_up(cluster: LocalCluster) -> None:
    async def done() -> bool:
        for node in cluster.nodes.values():
            last = node.engine.last_lsn()
            if any(s.acked_lsn < last for s in node.replication.senders.values()):
                return False
        return True

    await eventually(done, 30.0, "replication caught up")


def entries(node: Node) -> list[AuditEntry]:
    return [AuditEntry.decode(e.body) for e in node.audit.iter_all()]


def counted_refusals(node: Node) -> int:
    total = 0.0
    for family in node.metrics.registry.collect():
        if family.name == "domicile_policy_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("result") == "refuse":
                    total += sample.value
    return int(total)


class Nemesis:
    """Cuts a node off from its peers, or stops and restarts it, one fault at a time, at drawn
    moments while a phase's operations run. The first two faults of a phase are one of each
    kind, in drawn order, and the operations wait at drawn points for them to have started: a
    phase injects both kinds while its operations run however fast or slow the machine is (on
    timing alone a short phase often got no restart)."""

    FORCED = ("partition", "restart")

    def __init__(self, cluster: LocalCluster, rng: random.Random, ops: int) -> None:
        self.cluster = cluster
        self.rng = rng
        self.injected: collections.Counter[str] = collections.Counter()
        self.forced = rng.sample(self.FORCED, len(self.FORCED))
        # Where the workload waits for the j-th forced fault to have started: before the round
        # of CONCURRENCY operations that starts at this index.
        self.hold_at = sorted(rng.randrange(0, ops, CONCURRENCY) for _ in self.forced)
        self.started = 0
        self.ended = False  # run() returned or raised: nothing more to wait for
        self._started_changed = asyncio.Event()

    async def hold(self, next_op: int) -> None:
        for j, at in enumerate(self.hold_at):
            while next_op >= at and self.started <= j and not self.ended:
                self._started_changed.clear()
                await self._started_changed.wait()

    def _start(self) -> None:
        self.started += 1
        self._started_changed.set()

    async def run(self, stop: asyncio.Event) -> collections.Counter[str]:
        try:
            return await self._faults(stop)
        finally:
            # A nemesis that failed must not leave the workload waiting (its error is raised
            # where the phase awaits it).
            self.ended = True
            self._started_changed.set()

    async def _faults(self, stop: asyncio.Event) -> collections.Counter[str]:
        while not stop.is_set() or self.started < len(self.forced):
            await asyncio.sleep(self.rng.uniform(0.1, 0.6))
            region = self.rng.choice(REGIONS)
            if self.started < len(self.forced):
                kind = self.forced[self.started]
            else:
                kind = "partition" if self.rng.random() < 0.6 else "restart"
            if kind == "partition":
                self.cluster.proxies[region].partition()
                self._start()
                await asyncio.sleep(self.rng.uniform(0.2, 1.0))
                self.cluster.proxies[region].heal()
            else:
                # Not cluster.stop_node: that also closes the test's channel to the node, which
                # cancels the workload's calls on it; a client of a node that stops sees it fail.
                node = self.cluster.nodes.pop(region)
                # Started before the stop: the operations it let go on meet the node stopping.
                self._start()
                await node.stop(grace_s=0.1)
                await asyncio.sleep(self.rng.uniform(0.1, 0.5))
                await self.cluster.start_node(region)
            self.injected[kind] += 1
        return self.injected


async def check_phase(
    cluster: LocalCluster, workload: Workload, version: str, restarted: bool = False
) -> dict[str, int]:
    """`restarted`: nodes restarted during the phase, so their counters started again from zero
    while their audit trails kept everything: the trail must hold at least what was counted."""
    await caught_up(cluster)
    summary: collections.Counter[str] = collections.Counter()
    for region, node in cluster.nodes.items():
        report = await node.compliance_scan(0, "property-test")
        assert report.policy_version == version
        assert report.violations_total == 0, (region, report.violations[:5])
        summary["versions checked"] += report.versions_checked
        await node.audit.flush()
        log = entries(node)
        # Residency refusals only: an access refusal (a stream from a peer this node does not know
        # yet, say) is no policy decision about a record.
        refusals = collections.Counter(
            (e.action, e.key) for e in log if e.decision == "refuse" and e.action != "access_denied"
        )
        for (where, action, key), seen in workload.refused.items():
            if where == region:
                assert refusals[(action, key)] >= seen, (region, action, key, seen, refusals[(action, key)])
        if restarted:
            assert sum(refusals.values()) >= counted_refusals(node), region
        else:
            assert sum(refusals.values()) == counted_refusals(node), region
        # Sources filter by the same policy, and every node adopted each pack before the phase's
        # writes: a target never has to refuse what it is sent.
        refused_at_target = [e for e in log if e.action == "replicate_receive" and e.decision == "refuse"]
        assert not refused_at_target, (region, refused_at_target[:3])
        summary["audited refusals"] += sum(refusals.values())
        summary["audit entries"] += len(log)
        verdict = verify_log(node.audit.iter_all(), node.audit.head())
        assert verdict.ok and verdict.anchored_size == node.audit.size, (region, verdict.problems[:5])
    return dict(summary)


async def test_random_workloads_leave_no_violation_and_every_refusal_audited(tmp_path: Path) -> None:
    await _property_run(tmp_path, faults=False, ops_per_phase=OPS_PER_PHASE)


async def test_random_workloads_under_partitions_and_restarts_leave_no_violation(tmp_path: Path) -> None:
    await _property_run(tmp_path, faults=True, ops_per_phase=max(1, OPS_PER_PHASE // 2))


async def _property_run(tmp_path: Path, *, faults: bool, ops_per_phase: int) -> None:
    seed = int(os.environ.get("DOMICILE_SEED", random.SystemRandom().randrange(2**32)))
    print(f"DOMICILE_SEED={seed}")
    rng = random.Random(seed)
    subjects = [(f"s{i}", rng.choice(JURISDICTIONS)) for i in range(SUBJECTS)]
    packs = phases()
    cluster = LocalCluster(tmp_path, REGIONS, pack=packs[0], namespaces=NAMESPACES, proxies=faults)
    await cluster.start()
    injected: collections.Counter[str] = collections.Counter()
    try:
        await cluster.wait_linked()
        workload = Workload(cluster, faults)
        for i, pack in enumerate(packs):
            if i:
                await cluster.change_policy(pack)
                await cluster.wait_linked()
            ops = make_ops(rng, ops_per_phase, subjects)
            if faults:
                stop = asyncio.Event()
                faults_of_phase = Nemesis(cluster, random.Random(rng.getrandbits(64)), len(ops))
                faulting = asyncio.create_task(faults_of_phase.run(stop))
                try:
                    await workload.run_all(ops, faults_of_phase.hold)
                finally:
                    stop.set()
                    phase_faults = await faulting
                # Both kinds in every phase, started while its operations ran (they waited).
                assert phase_faults["partition"] > 0 and phase_faults["restart"] > 0, phase_faults
                injected += phase_faults
                await cluster.wait_linked(30.0)
            else:
                await workload.run_all(ops)
            summary = await check_phase(cluster, workload, pack["version"], restarted=faults)
            print(f"phase {i} policy {pack['version']}: {summary}")
        print(f"operations {sum(workload.outcomes.values())}: {dict(sorted(workload.outcomes.items()))}")
        if faults:
            print(f"faults injected: {dict(injected)}")
            assert injected["partition"] > 0 and injected["restart"] > 0
        assert workload.outcomes["put refused"] > 0 and workload.outcomes["put ok"] > 0
    finally:
        await cluster.stop()
