"""The node's side of authorization: the resource of each RPC, refusals counted and audited.

Record RPCs act on their namespace as this region serves it (its classification, owner and
purposes from the topology in force); every other RPC acts on this node's region.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from domicile.authz import NamespaceResource, RegionResource
from domicile.authz.gate import Caller, Gate, Refusal
from domicile.errors import DomicileError, PermissionDenied
from domicile.model import Classification, check_namespace_name
from node.compliance.enforcer import Audit, AuditSink
from node.metrics import NodeMetrics
from node.topology_view import TopologyView

log = logging.getLogger("domicile.node.access")
DETAIL_CHARS_MAX = 1000
IDENTITY_CHARS_MAX = 512
NAMESPACE_CHARS_MAX = 64


class NodeAccess:
    def __init__(self, gate: Gate, *, region: str, view: TopologyView) -> None:
        self.gate = gate
        self.home = region
        self.view = view
        self._resource = RegionResource(region)

    def namespace(self, context: Any, action: str, namespace: str) -> Caller:
        """The caller, if the policies let it call `action` on `namespace` here.

        Whether a namespace exists is told only to those allowed to use it: an unknown namespace
        is decided as one that no one owns, with no purposes and an unspecified classification
        (the service answers NotFound only when that is allowed), and every refusal on a
        namespace says the same whether it exists or not, unless the caller would be allowed for
        another of its purposes (then it is told which)."""
        caller = self.gate.authenticate(context, action)
        spec = self.view.topology.cluster.find_namespace(namespace)
        if spec is None:
            # A malformed name is InvalidArgument, which says nothing of what exists.
            check_namespace_name(namespace)
            resource = NamespaceResource(namespace, self.home, Classification.UNSPECIFIED.label)
        else:
            resource = NamespaceResource.of(spec, self.home)
        try:
            return self.gate.authorize(caller, action, resource, namespace=namespace)
        except PermissionDenied:
            if spec is not None and self.gate.allows_with_some_purpose(caller, action, resource):
                raise
            raise PermissionDenied(
                f"{caller.identity} may not call {action} on namespace {namespace!r} at {self.home}: "
                "no policy allows it for this caller (with the default policies an app may use the "
                "namespaces it owns, for one of their declared purposes; `domicile authz explain` "
                "shows what allows a call)"
            ) from None

    def region(self, context: Any, action: str) -> Caller:
        return self.gate.check(context, action, self._resource)


def refusal_recorder(
    metrics: NodeMetrics, audit: AuditSink, policy_version: Callable[[], str]
) -> Callable[[Refusal], None]:
    """What a node does with each refusal: count it, log it, and write it to the audit trail
    with the verified identity (or the peer address when there was none)."""

    def record(refusal: Refusal) -> None:
        metrics.authz_refusals.labels(refusal.action, refusal.reason.value).inc()
        log.warning("refused %s for %s: %s", refusal.action, refusal.identity, refusal.message)
        try:
            audit.record(
                principal=refusal.identity[:IDENTITY_CHARS_MAX],
                action=Audit.ACCESS_DENIED,
                # As the caller sent it: bounded, since a refused request was never validated.
                namespace=refusal.namespace[:NAMESPACE_CHARS_MAX],
                decision="refuse",
                rule=refusal.reason.value,
                policy_version=policy_version(),
                detail=f"{refusal.action}: {refusal.message}"[:DETAIL_CHARS_MAX],
            )
        except DomicileError as error:
            # The call is refused either way; a full audit queue must not turn that into another error.
            log.error("refusal of %s for %s not audited: %s", refusal.action, refusal.identity, error.message)

    return record
