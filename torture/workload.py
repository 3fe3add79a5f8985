"""The torture run's clients: concurrent read-modify-writes with contexts (siblings and lww),
blind writes, deletes, reads, and writes of personal data placed by the policy pack.

Each client is bound to one node and reaches it through its own port on the fault router, so a
partition can separate clients from nodes too. Keys are few, so that writes contend. Every value
is unique in the run, so the checker can tell each write apart.
"""

from __future__ import annotations

import asyncio
import random
import time

import grpc

from domicile.identity.principal import ExpectedPeer
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as spb_grpc
from torture.cluster import LWW, PEOPLE, SIBLINGS, TortureCluster
from torture.history import DEFINITE_FAILURES, History, Op, Seen

KEYS_PER_NAMESPACE = 6
OP_DEADLINE_S = 2.0
# Subjects of the personal namespace and their jurisdictions: a German subject may not go to
# us-east-1 unless the pack's facts allow it; the policy pack decides, the checker's scanner
# check says whether any copy ended up where it may not be.
SUBJECTS = (("subject-de", "DE"), ("subject-us", "US-CA"), ("subject-jp", "JP"))
# (operation, weight)
# Inserts write keys of their own, never written again: each must be on every replica at the
# end, which makes a lost write visible that contention would otherwise hide by superseding it.
INSERT_PREFIX = "i-"
MIX = (
    ("insert", 12),
    ("rmw-siblings", 28),
    ("write-siblings", 10),
    ("delete-siblings", 8),
    ("rmw-lww", 20),
    ("write-lww", 10),
    ("subject-write", 12),
    ("read", 12),
)


def seen_of(response: spb.GetResponse | spb.ScanItem) -> Seen:
    return Seen(
        vv=dict(response.context.version_vector),
        dots=[(d.node_id, d.counter) for d in response.context.dots],
        live=[((v.dot.node_id, v.dot.counter), v.value.decode(), v.hlc) for v in response.versions],
    )


class Client:
    def __init__(
        self, index: int, region: str, stub: spb_grpc.StorageNodeServiceStub, history: History, t0: float
    ) -> None:
        self.name = f"client-{index}"
        self.region = region
        self.stub = stub
        self.history = history
        self.t0 = t0
        self.sequence = 0

    def _op(self, op_id: int, f: str, namespace: str, key: str) -> Op:
        return Op(op_id, self.name, self.region, f, namespace, key, time.monotonic() - self.t0)

    def _value(self) -> str:
        self.sequence += 1
        return f"{self.name}-{self.sequence}"

    def _finish(self, op: Op, error: grpc.aio.AioRpcError | None) -> None:
        op.end_s = time.monotonic() - self.t0
        if error is None:
            op.outcome = "ok"
        else:
            code = error.code()
            op.outcome = "fail" if code in DEFINITE_FAILURES or not op.writes else "info"
            op.error = f"{code.name}: {(error.details() or '')[:200]}"
        self.history.record(op)

    async def run_one(self, op_id: int, kind: str, rng: random.Random) -> None:
        key = f"k{rng.randrange(KEYS_PER_NAMESPACE)}"
        if kind == "read":
            op = self._op(op_id, "read", rng.choice((SIBLINGS, LWW)), key)
            try:
                op.read = seen_of(await self._get(op.namespace, key))
            except grpc.aio.AioRpcError as error:
                self._finish(op, error)
                return
            self._finish(op, None)
            return
        if kind == "insert":
            op = self._op(op_id, "insert", SIBLINGS, f"{INSERT_PREFIX}{self.name}-{self.sequence + 1}")
            op.value = self._value()
            await self._write(op, spb.PutRequest(namespace=SIBLINGS, key=op.key, value=op.value.encode()))
            return
        if kind == "subject-write":
            # With the context it read: blind writes would pile up siblings on the few subject
            # keys until the cap refused every one of them (nothing else resolves those keys).
            subject, jurisdiction = rng.choice(SUBJECTS)
            op = self._op(op_id, "subject-write", PEOPLE, f"{subject}-{key}")
            token = await self._read_first(op)
            if token is None:
                return
            op.value = self._value()
            request = spb.PutRequest(
                namespace=PEOPLE, key=op.key, value=op.value.encode(), context_token=token,
                subject_id=subject, subject_jurisdiction=jurisdiction,
            )  # fmt: skip
            await self._write(op, request)
            return
        f, _, mode = kind.partition("-")
        namespace = SIBLINGS if mode == "siblings" else LWW
        op = self._op(op_id, f, namespace, key)
        token = b""
        if f in ("rmw", "delete"):
            read_token = await self._read_first(op)
            if read_token is None:
                return
            token = read_token
        if f == "delete":
            await self._delete(op, token)
            return
        op.value = self._value()
        await self._write(
            op, spb.PutRequest(namespace=namespace, key=key, value=op.value.encode(), context_token=token)
        )

    async def _read_first(self, op: Op) -> bytes | None:
        """Reads the op's key into `op.read` and returns the context token a write carries; None
        (and the op recorded as failed: nothing was written) when the read failed."""
        try:
            response = await self._get(op.namespace, op.key)
        except grpc.aio.AioRpcError as error:
            op.outcome = "fail"
            op.end_s = time.monotonic() - self.t0
            op.error = f"read failed: {error.code().name}"
            self.history.record(op)
            return None
        op.read = seen_of(response)
        token: bytes = response.context_token
        return token

    async def _get(self, namespace: str, key: str) -> spb.GetResponse:
        response: spb.GetResponse = await self.stub.Get(
            spb.GetRequest(namespace=namespace, key=key), timeout=OP_DEADLINE_S
        )
        return response

    async def _write(self, op: Op, request: spb.PutRequest) -> None:
        try:
            response: spb.PutResponse = await self.stub.Put(request, timeout=OP_DEADLINE_S)
        except grpc.aio.AioRpcError as error:
            self._finish(op, error)
            return
        op.dot = (response.version.dot.node_id, response.version.dot.counter)
        op.hlc = response.version.hlc
        self._finish(op, None)

    async def _delete(self, op: Op, token: bytes) -> None:
        request = spb.DeleteRequest(namespace=op.namespace, key=op.key, context_token=token)
        try:
            response: spb.DeleteResponse = await self.stub.Delete(request, timeout=OP_DEADLINE_S)
        except grpc.aio.AioRpcError as error:
            self._finish(op, error)
            return
        if response.HasField("version"):
            op.dot = (response.version.dot.node_id, response.version.dot.counter)
            op.hlc = response.version.hlc
        self._finish(op, None)


class Workload:
    def __init__(self, cluster: TortureCluster, history: History, seed: int, clients: int) -> None:
        self.cluster = cluster
        self.history = history
        self.rng = random.Random(seed)
        self.client_count = clients
        self.t0 = time.monotonic()
        self._next_id = 0
        self._channels: list[grpc.aio.Channel] = []

    async def _clients(self) -> list[Client]:
        regions = list(self.cluster.nodes)
        clients = []
        for i in range(self.client_count):
            region = regions[i % len(regions)]
            node = self.cluster.nodes[region]
            proxy = await self.cluster.router.listen(f"client-{i}")
            self.cluster.clients.append(f"client-{i}")
            channel = self.cluster.dialer.channel(
                node.address, ExpectedPeer.node(region, region), options=[("grpc.http_proxy", proxy)]
            )
            self._channels.append(channel)
            clients.append(Client(i, region, spb_grpc.StorageNodeServiceStub(channel), self.history, self.t0))
        return clients

    async def run(self, stop: asyncio.Event, pause_s: float = 0.01) -> None:
        clients = await self._clients()
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]

        async def loop(client: Client, rng: random.Random) -> None:
            while not stop.is_set():
                self._next_id += 1
                await client.run_one(self._next_id, rng.choices(kinds, weights)[0], rng)
                await asyncio.sleep(pause_s)

        # One generator per client, seeded from the run's, so the sequence each client draws
        # replays with the seed (the interleaving depends on timing, as in any such test).
        await asyncio.gather(*(loop(c, random.Random(self.rng.getrandbits(64))) for c in clients))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels), return_exceptions=True)
