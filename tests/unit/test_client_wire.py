"""The SDK over real gRPC against stand-in servers: a coordinator that serves a fixed topology
and nodes that keep records in memory, enforce namespace scopes like the real node (refusal
with the allowed-regions trailer) and can be told to fail. The real daemons are exercised by
tests/system; these tests pin the client's wire behaviour: routing, the placement retry, error
mapping, retries, pagination and deadlines. The stand-ins also serve the audit and compliance
RPCs (ReadAuditLog with the real node's paging, GetAuditHead, ScanCompliance) over a real,
signed audit chain built with domicile.audit."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from domicile.audit import GENESIS, AuditEntry, ClosedChain, SignedHead, StoredEntry, chain_hash, sign_head
from domicile.causality import CausalContext
from domicile.client import AsyncClient, Client, NodeHealth, RetryPolicy
from domicile.errors import (
    DataCorruption,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PlacementRefused,
    ResourceExhausted,
    Unavailable,
)
from domicile.model import Classification
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import coordinator_pb2_grpc as cgrpc
from domicile.v1 import storage_node_pb2 as spb
from domicile.v1 import storage_node_pb2_grpc as sgrpc
from domicile.wire.audit import closed_chain_to_pb, entry_to_pb, head_to_pb

SCOPES = {
    "instruments": None,  # global
    "customers_eu": ("eu-west-1", "eu-central-1"),
}
REGIONS = ("us-east-1", "eu-west-1", "eu-central-1")
# The stand-in node streams its audit log in messages of this many entries (the real node uses
# larger batches); small, so that a page spans several messages.
AUDIT_MESSAGE_ENTRIES = 3


def audit_chain(
    region: str, count: int, key: Ed25519PrivateKey, *, time_ms: int = 1_790_000_000_000
) -> tuple[list[StoredEntry], SignedHead]:
    """A valid log of `count` entries of `region` and its signed head."""
    entries: list[StoredEntry] = []
    prev = GENESIS
    for seq in range(1, count + 1):
        body = AuditEntry(
            seq=seq,
            time_ms=time_ms + seq,
            hlc=seq,
            region=region,
            node_id=region,
            principal="client:ipv4:127.0.0.1:5000",
            action="put",
            namespace="customers_eu",
            key=f"c-{seq}",
            decision="allow",
            rule="gdpr.home",
            policy_version="p1",
            detail=f"entry {seq}",
        ).encode()
        prev = chain_hash(prev, body)
        entries.append(StoredEntry(seq, body, prev))
    head = sign_head(key, region=region, node_id=region, size=count, head=prev, time_ms=time_ms + count)
    return entries, head


@dataclass
class FakeNode(sgrpc.StorageNodeServiceServicer):
    region: str
    records: dict[tuple[str, str], list[tuple[int, bytes]]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    # Codes to fail the next calls with, in order.
    failures: list[grpc.StatusCode] = field(default_factory=list)
    corrupt: bool = False
    delay: threading.Event | None = None
    counter: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Fields a Get answers with removed (value, subject_id, ...), as the policy may ask.
    redact: tuple[str, ...] = ()
    deletes: list[spb.DeleteRequest] = field(default_factory=list)
    audit_log: list[StoredEntry] = field(default_factory=list)
    audit_head: SignedHead | None = None
    audit_requests: list[spb.ReadAuditLogRequest] = field(default_factory=list)
    audit_exported_size: int = 0
    compliance: spb.ScanComplianceResponse | None = None
    compliance_requests: list[spb.ScanComplianceRequest] = field(default_factory=list)
    receipt: spb.RemediateComplianceResponse | None = None
    backfill: spb.BackfillStatus | None = None
    remediate_requests: list[spb.RemediateComplianceRequest] = field(default_factory=list)

    def _enter(self, method: str, context: grpc.ServicerContext, namespace: str = "") -> None:
        with self.lock:
            self.calls.append(method)
            failure = self.failures.pop(0) if self.failures else None
        if self.delay is not None:
            self.delay.wait(5)
        if failure is not None:
            context.abort(failure, f"injected {failure.name}")
        if namespace and namespace not in SCOPES:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown namespace {namespace!r}")

    def _refuse_outside_scope(self, namespace: str, context: grpc.ServicerContext) -> None:
        scope = SCOPES[namespace]
        if scope is not None and self.region not in scope:
            context.set_trailing_metadata((("domicile-allowed-regions", ",".join(scope)),))
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"namespace {namespace} may only be held in: {', '.join(scope)}; {self.region} is outside",
            )

    def _version(self, counter: int, value: bytes, out) -> None:
        out.dot.node_id = self.region
        out.dot.counter = counter
        out.value = value
        out.origin_region = self.region
        out.checksum_sha256 = hashlib.sha256(b"damaged" if self.corrupt else value).digest()

    def Put(self, request, context):
        self._enter("Put", context, request.namespace)
        self._refuse_outside_scope(request.namespace, context)
        if not request.key:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key is empty")
        with self.lock:
            self.counter += 1
            kept = [] if request.context_token else self.records.get((request.namespace, request.key), [])
            self.records[(request.namespace, request.key)] = [*kept, (self.counter, request.value)]
            counter = self.counter
        resp = spb.PutResponse(lsn=counter, region=self.region)
        self._version(counter, request.value, resp.version)
        resp.context.version_vector[self.region] = counter
        resp.context_token = b"\x01" + f"fake-{self.region}-{counter}".encode()
        return resp

    def Get(self, request, context):
        self._enter("Get", context, request.namespace)
        resp = spb.GetResponse(region=self.region)
        for counter, value in self.records.get((request.namespace, request.key), []):
            version = resp.versions.add()
            self._version(counter, value, version)
            if self.redact:
                # The checksum stays: it is of the stored value, which the reader does not get.
                version.redacted_fields.extend(self.redact)
                if "value" in self.redact:
                    version.value = b""
                if "subject_id" in self.redact:
                    version.subject_id = ""
            resp.context.version_vector[self.region] = counter
            resp.context_token = b"\x01" + f"fake-{self.region}-{counter}".encode()
        resp.found = bool(resp.versions)
        return resp

    def Delete(self, request, context):
        self._enter("Delete", context, request.namespace)
        self._refuse_outside_scope(request.namespace, context)
        self.deletes.append(request)
        existed = self.records.pop((request.namespace, request.key), None) is not None
        return spb.DeleteResponse(existed=existed, lsn=self.counter)

    def Scan(self, request, context):
        self._enter("Scan", context, request.namespace)
        keys = sorted(
            k
            for (ns, k) in self.records
            if ns == request.namespace and k.startswith(request.key_prefix) and k > request.page_token
        )
        page = keys[: request.page_size or 100]
        resp = spb.ScanResponse()
        for key in page:
            item = resp.items.add(key=key)
            for counter, value in self.records[(request.namespace, key)]:
                self._version(counter, value, item.versions.add())
        if len(keys) > len(page):
            resp.next_page_token = page[-1]
        return resp

    def GetNodeStatus(self, request, context):
        self._enter("GetNodeStatus", context)
        return spb.GetNodeStatusResponse(
            node_id=self.region,
            region=self.region,
            records_stored=len(self.records),
            policy_version="p1",
            audit_entries=len(self.audit_log),
            audit_exported_size=self.audit_exported_size,
            compliance_violations=self.compliance.violations_total if self.compliance else 0,
            backfill=self.backfill,
        )

    def ReadAuditLog(self, request, context):
        # The real node's semantics: positions by seq up to the size of its head, the head in
        # the first message, then batches of the entries after each batch's last seq.
        self._enter("ReadAuditLog", context)
        self.audit_requests.append(request)
        head = self.audit_head
        end = head.size if head is not None else 0
        after = request.after_seq
        if request.tail:
            after = max(0, end - (request.limit or end))
        elif request.limit:
            end = min(end, after + request.limit)
        first = spb.ReadAuditLogResponse()
        if head is not None:
            head_to_pb(head, first.head)
        yield first
        while after < end:
            batch = [e for e in self.audit_log if e.seq > after][: min(AUDIT_MESSAGE_ENTRIES, end - after)]
            if not batch:
                return
            response = spb.ReadAuditLogResponse()
            for entry in batch:
                entry_to_pb(entry, response.records.add())
            after = batch[-1].seq
            yield response

    def ScanCompliance(self, request, context):
        self._enter("ScanCompliance", context)
        self.compliance_requests.append(request)
        found = self.compliance or spb.ScanComplianceResponse(
            region=self.region, policy_version="p1", versions_checked=len(self.records)
        )
        resp = spb.ScanComplianceResponse()
        resp.CopyFrom(found)
        del resp.violations[request.violations_max or 1000 :]
        return resp

    def RemediateCompliance(self, request, context):
        self._enter("RemediateCompliance", context)
        self.remediate_requests.append(request)
        return self.receipt or spb.RemediateComplianceResponse(
            request_id=request.request_id, region=self.region, node_id=self.region, policy_version="p1"
        )


class FakeCoordinator(cgrpc.CoordinatorServiceServicer):
    def __init__(self) -> None:
        self.topology = cpb.Topology(revision=1, policy_version="p1")
        self.calls = 0
        # Region -> the last exported head and when it was accepted.
        self.audit_heads: dict[str, tuple[SignedHead, int]] = {}
        # region -> (the exporting node's incarnation, its closed chains), when given.
        self.audit_chains: dict[str, tuple[int, list[ClosedChain]]] = {}
        self.audit_chains_omitted: dict[str, int] = {}
        self.failures: list[grpc.StatusCode] = []

    def GetTopology(self, request, context):
        self.calls += 1
        return cpb.GetTopologyResponse(topology=self.topology)

    def GetAuditHead(self, request, context):
        self.calls += 1
        if self.failures:
            failure = self.failures.pop(0)
            context.abort(failure, f"injected {failure.name}")
        found = self.audit_heads.get(request.region)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no audit head exported for region {request.region}")
        incarnation, closed = self.audit_chains.get(request.region, (0, []))
        resp = cpb.GetAuditHeadResponse(accepted_unix_ms=found[1], incarnation=incarnation)
        head_to_pb(found[0], resp.head)
        for chain in closed:
            closed_chain_to_pb(chain, resp.closed_chains.add())
        resp.closed_chains_omitted = self.audit_chains_omitted.get(request.region, 0)
        return resp


class FakeCluster:
    """A coordinator and one in-memory node per region, each on its own free port. Subclasses
    of the stand-ins (with more RPCs) can be passed in."""

    def __init__(
        self, coordinator: FakeCoordinator | None = None, node_type: type[FakeNode] = FakeNode
    ) -> None:
        self.servers: list[grpc.Server] = []
        self.coordinator = coordinator if coordinator is not None else FakeCoordinator()
        self.coordinator_address = self._serve(
            lambda s: cgrpc.add_CoordinatorServiceServicer_to_server(self.coordinator, s)
        )
        self.nodes: dict[str, FakeNode] = {}
        topo = self.coordinator.topology
        for region in REGIONS:
            fake = node_type(region)
            address = self._serve(lambda s, f=fake: sgrpc.add_StorageNodeServiceServicer_to_server(f, s))
            self.nodes[region] = fake
            topo.regions.add(name=region)
            topo.nodes.add(node_id=region, region=region, address=address, health=cpb.NODE_HEALTH_UP)
        for name, scope in SCOPES.items():
            ns = topo.namespaces.add(name=name, regions=list(scope or ()))
            setattr(ns, "global", scope is None)

    def _serve(self, register) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.servers.append(server)
        return f"127.0.0.1:{port}"

    def set_health(self, region: str, health: int) -> None:
        for n in self.coordinator.topology.nodes:
            if n.region == region:
                n.health = health

    def add_dead_node(self, region: str, node_id: str) -> None:
        """A registered node whose address refuses connections (a port nothing listens on)."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.coordinator.topology.nodes.add(
            node_id=node_id, region=region, address=f"127.0.0.1:{port}", health=cpb.NODE_HEALTH_UP
        )

    def give_audit_log(
        self,
        region: str,
        count: int,
        *,
        exported: int | None = None,
        accepted_unix_ms: int = 1_790_000_100_000,
    ) -> tuple[list[StoredEntry], Ed25519PrivateKey]:
        """Gives `region`'s node a valid audit log of `count` entries (its head covers them all)
        and, unless exported is None, the coordinator the head of its first `exported` entries."""
        key = Ed25519PrivateKey.generate()
        entries, head = audit_chain(region, count, key)
        node = self.nodes[region]
        node.audit_log, node.audit_head = entries, head
        if exported is not None:
            _, exported_head = audit_chain(region, exported, key)
            self.coordinator.audit_heads[region] = (exported_head, accepted_unix_ms)
            node.audit_exported_size = exported
        return entries, key

    def regions_called(self, method: str) -> list[str]:
        return [r for r, n in self.nodes.items() if method in n.calls]

    def stop(self) -> None:
        for server in self.servers:
            server.stop(None)


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        fake.stop()


FAST = RetryPolicy(attempts_max=3, backoff_initial_s=0.001, backoff_max_s=0.01)


@pytest.fixture
def client(cluster: FakeCluster) -> Iterator[Client]:
    with Client(cluster.coordinator_address, insecure=True, deadline_s=5.0, retry=FAST) as c:
        yield c


def test_put_and_get_round_trip_as_domain_types(cluster, client):
    put = client.put("instruments", "AAPL", b"apple", classification="public")
    assert put.region == "us-east-1" and put.lsn == 1
    assert put.version.dot.node_id == "us-east-1"
    assert put.context == CausalContext.of({"us-east-1": 1})
    got = client.get("instruments", "AAPL")
    assert got.found and got.value == b"apple" and got.region == "us-east-1"
    assert not client.get("instruments", "MSFT").found
    assert client.get("instruments", "MSFT").value is None


def test_a_refused_put_is_retried_once_at_an_allowed_region(cluster):
    with Client(cluster.coordinator_address, insecure=True, region="us-east-1", retry=FAST) as client:
        # The client prefers us-east-1, but customers_eu is scoped to the EU: routed there first.
        assert client.put("customers_eu", "c1", b"x").region == "eu-west-1"
        assert cluster.nodes["us-east-1"].calls == []
        # A stale topology that claims the namespace is global makes the client try its own
        # region; the refusal's trailer then sends the write where it may go.
        setattr(cluster.coordinator.topology.namespaces[1], "global", True)
        client.topology()
        result = client.put("customers_eu", "c2", b"y")
    assert result.region == "eu-west-1"
    assert cluster.nodes["us-east-1"].calls == ["Put"]
    assert ("customers_eu", "c2") in cluster.nodes["eu-west-1"].records


def test_an_explicit_region_is_never_second_guessed(cluster, client):
    with pytest.raises(PlacementRefused) as raised:
        client.put("customers_eu", "c1", b"x", region="us-east-1")
    assert raised.value.allowed_regions == ("eu-west-1", "eu-central-1")
    assert "may only be held in" in raised.value.message
    assert cluster.regions_called("Put") == ["us-east-1"]
    with pytest.raises(PlacementRefused):
        client.delete("customers_eu", "c1", region="us-east-1")


def test_delete_is_rerouted_like_put(cluster):
    setattr(cluster.coordinator.topology.namespaces[1], "global", True)
    with Client(cluster.coordinator_address, insecure=True, region="us-east-1", retry=FAST) as client:
        client.put("customers_eu", "c1", b"x", region="eu-west-1")
        result = client.delete("customers_eu", "c1")
    assert result.existed and result.region == "eu-west-1"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.DATA_LOSS, DataCorruption),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_errors_that_are_not_retriable_fail_after_one_call(cluster, client, code, kind):
    cluster.nodes["us-east-1"].failures = [code]
    with pytest.raises(kind, match=f"injected {code.name}"):
        client.get("instruments", "k")
    assert cluster.nodes["us-east-1"].calls == ["Get"]


def test_retriable_errors_are_retried_then_succeed(cluster, client):
    cluster.nodes["us-east-1"].failures = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert client.put("instruments", "k", b"v").region == "us-east-1"
    assert cluster.nodes["us-east-1"].calls == ["Put", "Put"]


def test_retries_are_bounded(cluster, client):
    cluster.nodes["us-east-1"].failures = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 10
    with pytest.raises(ResourceExhausted):
        client.get("instruments", "k")
    assert cluster.nodes["us-east-1"].calls == ["Get"] * FAST.attempts_max


def test_an_unavailable_node_is_routed_around(cluster, client):
    cluster.add_dead_node("eu-west-1", "eu-west-1-dead")
    cluster.set_health("eu-west-1", cpb.NODE_HEALTH_DOWN)
    for n in cluster.coordinator.topology.nodes:
        if n.node_id == "eu-west-1-dead":
            n.health = cpb.NODE_HEALTH_UP
    calls_before = cluster.coordinator.calls
    # The dead node is the only one reported up in eu-west-1; its failure makes the client
    # refresh the topology and try the live (down-reported) node instead.
    result = client.put("customers_eu", "c1", b"x", region="eu-west-1")
    assert result.region == "eu-west-1"
    assert cluster.nodes["eu-west-1"].calls == ["Put"]
    assert cluster.coordinator.calls > calls_before


def test_client_side_validation_names_what_is_allowed(client):
    with pytest.raises(InvalidArgument, match="value must be bytes"):
        client.put("instruments", "k", "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="invalid namespace name 'Bad-Name'"):
        client.get("Bad-Name", "k")
    with pytest.raises(InvalidArgument, match="key is empty"):
        client.get("instruments", "")
    with pytest.raises(InvalidArgument, match="unknown classification 'secret'"):
        client.put("instruments", "k", b"v", classification="secret")
    with pytest.raises(InvalidArgument, match="page_size is 0; use 1 to 1000"):
        client.scan("instruments", page_size=0)
    with pytest.raises(InvalidArgument, match="unknown region 'mars'"):
        client.get("instruments", "k", region="mars")


def test_unknown_namespace_is_not_found_from_the_node(client):
    with pytest.raises(NotFound, match="unknown namespace 'nope'"):
        client.get("nope", "k")


def test_scan_follows_page_tokens_on_one_region(cluster, client):
    for i in range(7):
        client.put("instruments", f"k{i}", str(i).encode(), region="eu-central-1")
    client.put("instruments", "other", b"-", region="eu-central-1")
    items = list(client.scan("instruments", "k", page_size=3, region="eu-central-1"))
    assert [i.key for i in items] == [f"k{i}" for i in range(7)]
    assert [i.versions[0].value for i in items] == [str(i).encode() for i in range(7)]
    assert cluster.nodes["eu-central-1"].calls.count("Scan") == 3


def test_a_damaged_value_is_detected_end_to_end(cluster, client):
    client.put("instruments", "k", b"v")
    cluster.nodes["us-east-1"].corrupt = True
    with pytest.raises(DataCorruption, match="checksum"):
        client.get("instruments", "k")


def test_a_call_that_outlives_its_deadline_fails_with_deadline_exceeded(cluster):
    cluster.nodes["us-east-1"].delay = threading.Event()
    try:
        with (
            Client(cluster.coordinator_address, insecure=True, deadline_s=0.3, retry=FAST) as client,
            pytest.raises(DeadlineExceeded),
        ):
            client.get("instruments", "k")
    finally:
        cluster.nodes["us-east-1"].delay.set()


def test_no_coordinator_is_unavailable_with_its_address():
    with (
        Client("127.0.0.1:1", insecure=True, deadline_s=2.0, retry=FAST) as client,
        pytest.raises(Unavailable, match=r"coordinator at 127\.0\.0\.1:1"),
    ):
        client.get("instruments", "k")


def test_the_last_topology_serves_while_the_coordinator_is_away(cluster):
    with Client(cluster.coordinator_address, insecure=True, topology_ttl_s=0, retry=FAST) as client:
        client.put("instruments", "k", b"v")
        cluster.servers[0].stop(None)
        assert client.get("instruments", "k").value == b"v"


def test_node_status_and_topology(cluster, client):
    status = client.node_status("eu-west-1")
    assert status.node_id == "eu-west-1" and status.policy_version == "p1"
    assert client.node_status(node_id="eu-central-1").region == "eu-central-1"
    topo = client.topology()
    assert topo.region_names() == list(REGIONS)
    assert all(n.health is NodeHealth.UP for n in topo.nodes)
    with pytest.raises(InvalidArgument, match="a region or a node_id"):
        client.node_status()


def test_a_closed_client_refuses_calls(cluster):
    client = Client(cluster.coordinator_address, insecure=True)
    client.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        client.get("instruments", "k")


def test_siblings_are_returned_and_must_be_resolved_explicitly(cluster, client):
    client.put("instruments", "k", b"a")
    client.put("instruments", "k", b"b")
    got = client.get("instruments", "k")
    assert got.values == (b"a", b"b")
    with pytest.raises(FailedPrecondition, match="2 concurrent values"):
        _ = got.value
    # A plain context is refused before anything is sent; the token supersedes both.
    with pytest.raises(InvalidArgument, match="context_token"):
        client.put("instruments", "k", b"ab", context=got.context)
    with pytest.raises(InvalidArgument, match="context_token"):
        client.delete("instruments", "k", context=got.context)
    assert client.get("instruments", "k").values == (b"a", b"b")
    client.put("instruments", "k", b"ab", context_token=got.context_token)
    assert client.get("instruments", "k").value == b"ab"


# -- the asyncio client: same behaviour


async def test_async_client_routes_retries_and_maps_errors(cluster):
    cluster.nodes["us-east-1"].failures = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    async with AsyncClient(
        cluster.coordinator_address, insecure=True, region="us-east-1", retry=FAST
    ) as client:
        put = await client.put("instruments", "AAPL", b"apple", classification=Classification.PUBLIC)
        assert put.region == "us-east-1"
        assert (await client.get("instruments", "AAPL")).value == b"apple"
        assert (await client.put("customers_eu", "c1", b"x")).region == "eu-west-1"
        with pytest.raises(PlacementRefused) as raised:
            await client.put("customers_eu", "c1", b"x", region="us-east-1")
        assert raised.value.allowed_regions == ("eu-west-1", "eu-central-1")
        for i in range(5):
            await client.put("instruments", f"k{i}", b"v")
        keys = [item.key async for item in client.scan("instruments", "k", page_size=2)]
        assert keys == [f"k{i}" for i in range(5)]
        assert (await client.delete("instruments", "AAPL")).existed
        assert (await client.node_status("eu-central-1")).region == "eu-central-1"
        assert (await client.topology()).revision == 1
        with pytest.raises(NotFound):
            await client.get("nope", "k")
    # The injected RESOURCE_EXHAUSTED was retried: two Puts reached us-east-1 for the first write.
    assert cluster.nodes["us-east-1"].calls[:2] == ["Put", "Put"]


async def test_async_client_deadline(cluster):
    cluster.nodes["us-east-1"].delay = threading.Event()
    try:
        async with AsyncClient(
            cluster.coordinator_address, insecure=True, deadline_s=0.3, retry=FAST
        ) as client:
            with pytest.raises(DeadlineExceeded):
                await client.get("instruments", "k")
    finally:
        cluster.nodes["us-east-1"].delay.set()


async def test_async_client_routes_around_an_unavailable_node(cluster):
    cluster.nodes["us-east-1"].failures = [grpc.StatusCode.UNAVAILABLE]
    async with AsyncClient(
        cluster.coordinator_address, insecure=True, region="us-east-1", retry=FAST
    ) as client:
        # A global namespace may go to any region; the failed preferred node is tried last.
        assert (await client.put("instruments", "k", b"v")).region == "eu-west-1"
    assert cluster.nodes["us-east-1"].calls == ["Put"]
