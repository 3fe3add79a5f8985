"""ReplicationService servicer: the target end of a replication stream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from domicile import errors
from domicile.authz.gate import Caller, refuse_wrong_peer
from domicile.identity.principal import PrincipalKind
from domicile.identity.spiffe import check_region
from domicile.model import Limits, check_key, check_namespace_name, check_node_id, writer_id
from domicile.topology import NodeInfo
from domicile.v1 import replication_pb2
from domicile.v1 import replication_pb2 as rpb
from domicile.v1 import replication_pb2_grpc as rpb_grpc
from node.api.access import NodeAccess
from node.api.errors import abort_with
from node.replication import coalesce
from node.replication.bootstrap import SnapshotTarget
from node.replication.entropy import AntiEntropy
from node.replication.inbound import Receiver
from node.topology_view import TopologyView

ACTION = "replication.Replicate"

log = logging.getLogger("domicile.replication.inbound")


def _check_hello(hello: replication_pb2.ReplicationHello) -> None:
    """The hello's ids are well-formed before anything compares them or names them in a refusal:
    they come from the peer, and the source's ends up in the log and the audit trail. A hello
    names its source's region (the receiver holds it against the certificate)."""
    check_node_id(hello.source_node_id)
    check_node_id(hello.target_node_id)
    if not hello.source_region:
        raise errors.InvalidArgument(
            "the replication hello names no source_region; it names the region of its source"
        )
    check_region(hello.source_region)


class ReplicationServicer(rpb_grpc.ReplicationServiceServicer):
    def __init__(
        self,
        receiver: Receiver,
        access: NodeAccess,
        view: TopologyView,
        entropy: AntiEntropy | None = None,
        bootstrap: SnapshotTarget | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.receiver = receiver
        self.access = access
        self.view = view
        self.entropy = entropy

    def _refuse(self, caller: Caller, message: str) -> errors.DomicileError:
        return refuse_wrong_peer(self.access.gate, ACTION, caller, message)

    def _authorize_peer(self, caller: Caller) -> bool:
        """Before the hello is read: the peer must be a node of the cluster. Returns whether it
        holds a link to this node in the topology in force (the caller decides what an unlinked
        peer is told once it knows which revision the peer acts on)."""
        peer = caller.principal
        assert peer is not None
        if peer.kind is not PrincipalKind.NODE or not peer.node_id:
            raise self._refuse(caller, f"peer {caller.identity} is not a node; only nodes replicate")
        target = self.receiver.node_id
        topology = self.view.topology
        known = topology.node(peer.node_id)
        if known is not None and known.region != peer.region:
            # A certificate of another region naming this node id is not that node: its writes
            # would be stored under that node's name.
            raise self._refuse(
                caller,
                f"peer {caller.identity} is of region {peer.region!r}, but node {peer.node_id!r} is "
                f"in region {known.region!r}; only the node its certificate names, in its region, "
                "replicates as it",
            )
        return any(li.source_node_id == peer.node_id and li.target_node_id == target for li in topology.links)

    def _refuse_unlinked(self, caller: Caller, hello_revision: int) -> errors.DomicileError:
        topology = self.view.topology
        target = self.receiver.node_id
        if hello_revision > topology.revision:
            # The source acts on a newer topology this node has not adopted yet (at start, or
            # right after a change): not a refusal, the source retries shortly.
            return errors.FailedPrecondition(
                f"node {target} is at topology revision {topology.revision}, behind the "
                f"source's {hello_revision}; retry once it has caught up"
            )
        return self._refuse(
            caller,
            f"{caller.identity} holds no replication link to {target} in topology revision "
            f"{topology.revision}; it may send only once the coordinator plans that link",
        )

    def _check_source(self, caller: Caller, hello: replication_pb2.ReplicationHello) -> None:
        """The hello names the authenticated peer: its node id and region are the certificate's."""
        peer = caller.principal
        assert peer is not None
        if peer.node_id != hello.source_node_id:
            raise self._refuse(
                caller,
                f"peer {caller.identity} may not replicate as node {hello.source_node_id!r}: a "
                "stream's source must be the node its certificate names",
            )
        if peer.region != hello.source_region:
            raise self._refuse(
                caller,
                f"peer {caller.identity} claims region {hello.source_region!r}, "
                f"but its certificate says {peer.region!r}",
            )

    async def Replicate(
        self, request_iterator: AsyncIterator[rpb.ReplicateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.ReplicateResponse]:
        source = ""
        opened = False
        try:
            # Who is calling, and may it replicate at all, before a byte of its hello is read:
            # what an unauthorised peer sends is never decoded or used.
            caller = self.access.region(context, ACTION)
            linked = True if caller.principal is None else self._authorize_peer(caller)
            first = await anext(request_iterator, None)
            if first is None or first.WhichOneof("kind") != "hello":
                raise errors.InvalidArgument("a replication stream must start with a hello")
            hello = first.hello
            if not linked:
                # Only the revision (a number) is looked at, to tell a source ahead of this node
                # to retry; nothing of an unlinked peer's hello is validated, compared or logged.
                raise self._refuse_unlinked(caller, hello.topology_revision)
            _check_hello(hello)
            if caller.principal is not None:
                self._check_source(caller, hello)
            if hello.target_node_id != self.receiver.node_id:
                raise errors.FailedPrecondition(
                    f"this is node {self.receiver.node_id}, not {hello.target_node_id!r}; "
                    "refresh the topology"
                )
            source = writer_id(hello.source_node_id, hello.source_epoch)
            position = await self.receiver.open(source)
            opened = True  # closed below (open closes what it fails to open)
            log.info("replication stream from %s opened at position %d", source, position)
            yield rpb.ReplicateResponse(
                ready=rpb.ReplicationReady(resume_after_lsn=position, target_node_id=self.receiver.node_id)
            )
            # The batches that arrived while the one before was applied are applied together
            # (node.replication.coalesce), and acknowledged by one cumulative ack. Decoded and
            # checked one by one by the receiver: a bad mutation is refused alone.
            async for received in coalesce.received_together(request_iterator):
                if isinstance(received, rpb.ReplicationSnapshot):
                    # A bootstrap part (node.replication.bootstrap): the source's log was
                    # truncated past this node's position.
                    if self.bootstrap is None:
                        raise errors.InvalidArgument("this node takes no bootstrap parts")
                    source_node = self.view.topology.node(hello.source_node_id)
                    if source_node is None:
                        raise errors.FailedPrecondition(f"node {hello.source_node_id} is not in the topology")
                    position = await self.bootstrap.apply(source, source_node, received)
                    yield rpb.ReplicateResponse(ack=rpb.ReplicationAck(applied_through_lsn=position))
                    continue
                result = await self.receiver.apply_batches(source, received)
                yield rpb.ReplicateResponse(
                    ack=rpb.ReplicationAck(
                        applied_through_lsn=result.through_lsn,
                        refused_count=result.refused,
                        duplicate_count=result.duplicates,
                    )
                )
        except errors.DomicileError as exc:
            log.warning("replication stream from %s failed: %s", source or "?", exc.message)
            await abort_with(context, exc)
        finally:
            if opened:
                self.receiver.close(source)

    # -- anti-entropy (node.replication.entropy): the called side --------------------------

    def _entropy_caller(
        self, context: grpc.aio.ServicerContext, action: str, namespace: str, caller_node_id: str
    ) -> tuple[AntiEntropy, NodeInfo]:
        """Only a node may call, only as itself, only a node this one replicates the namespace
        to; a refusal is counted and audited like any other."""
        if self.entropy is None:
            raise errors.FailedPrecondition("anti-entropy is not running on this node")
        check_namespace_name(namespace)
        check_node_id(caller_node_id)
        caller = self.access.namespace(context, action, namespace)
        checked = self.entropy.check_caller(caller.principal, caller_node_id, namespace)
        if isinstance(checked, str):
            raise refuse_wrong_peer(self.access.gate, action, caller, checked)
        return self.entropy, checked

    async def EntropyDigests(
        self, request: rpb.EntropyDigestsRequest, context: grpc.aio.ServicerContext
    ) -> rpb.EntropyDigestsResponse:
        try:
            entropy, _ = self._entropy_caller(
                context, "replication.EntropyDigests", request.namespace, request.caller_node_id
            )
            tree = await entropy.digests(request.namespace)
            return rpb.EntropyDigestsResponse(
                root=tree.root,
                buckets=tree.buckets,
                key_count=tree.key_count,
                topology_revision=entropy.view.revision,
            )
        except errors.DomicileError as exc:
            await abort_with(context, exc)
            raise

    async def EntropyKeys(
        self, request: rpb.EntropyKeysRequest, context: grpc.aio.ServicerContext
    ) -> rpb.EntropyKeysResponse:
        try:
            entropy, caller = self._entropy_caller(
                context, "replication.EntropyKeys", request.namespace, request.caller_node_id
            )
            leaves, withheld = await entropy.key_digests(
                request.namespace, list(request.buckets), caller.region
            )
            response = rpb.EntropyKeysResponse(withheld_count=withheld)
            for leaf in leaves:
                response.keys.add(key=leaf.key, digest=leaf.digest)
            return response
        except errors.DomicileError as exc:
            await abort_with(context, exc)
            raise

    async def EntropyStates(
        self, request: rpb.EntropyStatesRequest, context: grpc.aio.ServicerContext
    ) -> rpb.EntropyStatesResponse:
        try:
            entropy, caller = self._entropy_caller(
                context, "replication.EntropyStates", request.namespace, request.caller_node_id
            )
            for key in request.keys:
                check_key(key, Limits())
            return await entropy.states(request.namespace, list(request.keys), caller)
        except errors.DomicileError as exc:
            await abort_with(context, exc)
            raise
