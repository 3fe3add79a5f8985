"""Fuzzes request validation: what a node checks before anything is written or read, and what
the SDK checks before anything is sent.

The first byte picks the target. Node side (Put, Get, Delete, Scan): the rest is the request
message as gRPC delivers it, handed to the real servicer (node/api/storage.py) and storage
service (node/service.py); the store and the erasure block are stand-ins that stop the request
the moment it has passed every check. SDK side: the rest feeds the arguments of the request
builders in domicile/wire/requests.py.

Oracle: only a DomicileError may escape (on the node, as the status it maps to), and whatever
passes the checks is within the documented limits (README, Limits), checked here independently.

    python tests/fuzz/fuzz_requests.py [-runs=N] [libFuzzer flags] corpus_dir...
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, cast

import atheris

with atheris.instrument_imports(include=["domicile", "node"]):
    import grpc
    from google.protobuf.message import DecodeError

    from domicile.authz.gate import Gate
    from domicile.cluster import parse_cluster
    from domicile.errors import DomicileError
    from domicile.model import Classification, Limits
    from domicile.topology import Topology
    from domicile.v1 import storage_node_pb2 as spb
    from domicile.wire import requests
    from node.api.access import NodeAccess
    from node.api.storage import StorageServicer
    from node.metrics import NodeMetrics
    from node.service import StorageService, decode_page_token
    from node.topology_view import TopologyView

LIMITS = Limits()
NAMESPACE = re.compile(r"[a-z][a-z0-9_]{0,62}")
JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")
CLUSTER = parse_cluster(
    {
        "regions": [{"name": "eu-west-1", "country": "IE"}, {"name": "us-east-1", "country": "US"}],
        "namespaces": [
            {"name": "trades", "regions": ["eu-west-1"], "classification": "financial"},
            {"name": "instruments", "regions": "global", "conflict_mode": "lww", "classification": "public"},
            {"name": "customers", "regions": "global", "classification": "personal"},
        ],
    }
)


class Reached(Exception):
    """The request passed every check and got to the store."""


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class Store:
    """The engine and the erasure block: the first thing each RPC asks of them comes after its
    checks, so being asked means the request was accepted."""

    def get(self, namespace: str, key: str) -> None:
        raise Reached

    def scan(self, namespace: str, prefix: str, start_after: str, limit: int) -> None:
        raise Reached

    def waiting_refusal(self, subject_id: str) -> None:
        raise Reached

    def erased_by(self, subject_id: str) -> str:
        raise Reached


class InlineOffload:
    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


class CallContext:
    """The parts of grpc.aio.ServicerContext the servicer uses."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def time_remaining(self) -> None:
        return None

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


STORE = Store()
VIEW = TopologyView(Topology(revision=1, cluster=CLUSTER))
SERVICE = StorageService(
    node_id="n1",
    region="eu-west-1",
    engine=cast(Any, STORE),
    committer=cast(Any, None),
    view=VIEW,
    enforcer=cast(Any, None),
    sealer=cast(Any, None),
    eraser=cast(Any, STORE),
    limits=LIMITS,
    metrics=NodeMetrics("n1", "eu-west-1"),
    offload=cast(Any, InlineOffload()),
)
# The servicer as the daemon builds it (node/daemon.py), with the gate of an --insecure port,
# which lets every call through. Allowing everything is right here only: this harness fuzzes
# request validation, which must hold for any caller the gate admits; authentication and
# authorization have tests of their own, the policies a harness (tests/fuzz/fuzz_authz.py).
ACCESS = NodeAccess(Gate(cluster=None), region="eu-west-1", view=VIEW)
SERVICER = StorageServicer(
    SERVICE, cast(Any, None), cast(Any, None), cast(Any, None), cast(Any, None), ACCESS
)
LOOP = asyncio.new_event_loop()
# The servicer logs every unexpected exception; Reached is one, on every accepted request.
logging.getLogger("domicile.node.api").disabled = True


def fail(what: str) -> None:
    raise AssertionError(f"accepted: {what}")


def check_key(key: str) -> None:
    size = len(key.encode("utf-8"))
    if not 1 <= size <= LIMITS.key_bytes_max or "\x00" in key:
        fail(f"key {key[:40]!r} of {size} bytes")


def check_namespace(name: str) -> None:
    if CLUSTER.find_namespace(name) is None:
        fail(f"unknown namespace {name!r}")


def check_jurisdiction(code: str) -> None:
    if code and not JURISDICTION.fullmatch(code):
        fail(f"subject jurisdiction {code!r}")


def check_subject(req: spb.PutRequest | spb.DeleteRequest) -> None:
    if len(req.subject_id.encode()) > LIMITS.subject_id_bytes_max:
        fail(f"subject id of {len(req.subject_id.encode())} bytes")
    check_jurisdiction(req.subject_jurisdiction)


def check_context(req: spb.PutRequest | spb.DeleteRequest) -> None:
    entries = len(req.context.version_vector) + len(req.context.dots)
    if entries > LIMITS.context_entries_max:
        fail(f"a context of {entries} entries")


def check_put(req: spb.PutRequest) -> None:
    check_namespace(req.namespace)
    check_key(req.key)
    if len(req.value) > LIMITS.value_bytes_max:
        fail(f"a value of {len(req.value)} bytes")
    if len(req.content_type.encode()) > LIMITS.content_type_bytes_max:
        fail(f"a content type of {len(req.content_type.encode())} bytes")
    check_subject(req)
    check_context(req)
    requested = Classification(req.classification)
    floor = CLUSTER.namespace(req.namespace).classification
    if requested is not Classification.UNSPECIFIED and requested.strictness < floor.strictness:
        fail(f"classification {requested.label} in a {floor.label} namespace")


def check_delete(req: spb.DeleteRequest) -> None:
    check_namespace(req.namespace)
    check_key(req.key)
    check_subject(req)
    check_context(req)


def check_get(req: spb.GetRequest) -> None:
    check_namespace(req.namespace)
    check_key(req.key)


def check_scan(req: spb.ScanRequest) -> None:
    check_namespace(req.namespace)
    if req.page_size > LIMITS.scan_page_size_max:
        fail(f"page size {req.page_size}")
    if req.page_token and not decode_page_token(req.page_token).startswith(req.key_prefix):
        fail(f"page token {req.page_token!r} outside prefix {req.key_prefix!r}")


NODE_RPCS: tuple[tuple[str, Any, Callable[[Any], None]], ...] = (
    ("Put", spb.PutRequest, check_put),
    ("Get", spb.GetRequest, check_get),
    ("Delete", spb.DeleteRequest, check_delete),
    ("Scan", spb.ScanRequest, check_scan),
)


def node_rpc(index: int, data: bytes) -> None:
    method, message, check = NODE_RPCS[index]
    try:
        request = message.FromString(data)
    except DecodeError:
        return  # gRPC refuses it before the servicer sees it
    try:
        LOOP.run_until_complete(getattr(SERVICER, method)(request, CallContext()))
    except Reached:
        check(request)
    except Aborted as exc:
        if exc.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            raise AssertionError(f"{method} ended with {exc}") from None
    else:
        raise AssertionError(f"{method} answered without reaching the store")


def text(fdp: atheris.FuzzedDataProvider, longest: int) -> str:
    # Any code point, lone surrogates included: a Python str can hold them.
    return str(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, longest)))


def sdk_put(fdp: atheris.FuzzedDataProvider) -> None:
    namespace, key = text(fdp, 70), text(fdp, 1100)
    req = requests.put_request(
        namespace,
        key,
        fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)),
        None,
        text(fdp, 300),
        text(fdp, 8),
        text(fdp, 24) or None,
        text(fdp, 300),
    )
    if not NAMESPACE.fullmatch(req.namespace):
        fail(f"namespace {req.namespace!r}")
    check_key(req.key)
    req.SerializeToString()


def sdk_delete(fdp: atheris.FuzzedDataProvider) -> None:
    req = requests.delete_request(text(fdp, 70), text(fdp, 1100), None, text(fdp, 300), text(fdp, 8))
    if not NAMESPACE.fullmatch(req.namespace):
        fail(f"namespace {req.namespace!r}")
    check_key(req.key)
    req.SerializeToString()


def sdk_subjects(fdp: atheris.FuzzedDataProvider) -> None:
    scope = text(fdp, 12)
    subject, namespace, key, reason = text(fdp, 300), text(fdp, 70), text(fdp, 1100), text(fdp, 1100)
    if fdp.ConsumeBool():
        erase = requests.erase_request(subject, reason, text(fdp, 8))
        check_jurisdiction(erase.subject_jurisdiction)
        erase.SerializeToString()
    else:
        hold = requests.place_hold_request(scope, subject, namespace, key, reason)
        if hold.namespace and not NAMESPACE.fullmatch(hold.namespace):
            fail(f"namespace {hold.namespace!r}")
        if hold.key:
            check_key(hold.key)
        hold.SerializeToString()


SDK_BUILDERS = (sdk_put, sdk_delete, sdk_subjects)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target, rest = data[0] % (len(NODE_RPCS) + len(SDK_BUILDERS)), data[1:]
    try:
        if target < len(NODE_RPCS):
            node_rpc(target, rest)
        else:
            SDK_BUILDERS[target - len(NODE_RPCS)](atheris.FuzzedDataProvider(rest))
    except DomicileError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
