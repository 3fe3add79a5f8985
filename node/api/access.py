"""The node's side of authorization: the resource of each RPC, refusals counted and audited.

Record RPCs act on their namespace as this region serves it (its classification, owner and
purposes from the topology in force); every other RPC acts on this node's region.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domicile.authz import NamespaceResource, RegionResource
from domicile.authz.gate import Caller, Gate, Reason, Refusal
from domicile.cluster import NamespaceSpec
from domicile.errors import DomicileError, PermissionDenied
from domicile.model import Classification, check_namespace_name
from node.compliance.enforcer import Audit, AuditSink
from node.metrics import NodeMetrics
from node.topology_view import TopologyView

log = logging.getLogger("domicile.node.access")
DETAIL_CHARS_MAX = 1000
IDENTITY_CHARS_MAX = 512
NAMESPACE_CHARS_MAX = 64
REFUSALS_AUDITED_PER_WINDOW = 20
REFUSAL_WINDOW_S = 60.0
REFUSAL_PRINCIPALS_MAX = 10_000
RATE_LIMITED = "rate_limited"
# The shared window of principals beyond REFUSAL_PRINCIPALS_MAX.
OTHER_PRINCIPALS = "other principals"


class NodeAccess:
    def __init__(self, gate: Gate, *, region: str, view: TopologyView) -> None:
        self.gate = gate
        self.home = region
        self.view = view
        self._resource = RegionResource(region)
        # Namespace name -> (its definition in the topology in force, its resource).
        self._resources: dict[str, tuple[NamespaceSpec, NamespaceResource]] = {}

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
            resource = self._served(spec)
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

    def _served(self, spec: NamespaceSpec) -> NamespaceResource:
        """The resource of a namespace as the topology in force defines it, built once per
        definition: the gate keeps allowed decisions by the resource object (Gate.authorize)."""
        known = self._resources.get(spec.name)
        if known is None or known[0] is not spec:
            known = self._resources[spec.name] = (spec, NamespaceResource.of(spec, self.home))
        return known[1]

    def region(self, context: Any, action: str) -> Caller:
        return self.gate.check(context, action, self._resource)


@dataclass
class _Window:
    """One principal's refusals in the current window."""

    start: float
    audited: int = 0
    unaudited: int = 0
    # Action -> refusals not audited one by one.
    by_action: dict[str, int] = field(default_factory=dict)


class RefusalAudit:
    """What a node does with each refusal: count it, log it, and write it to the audit trail
    with the verified identity (or the peer address when there was none).

    At most `per_window` refusals of one principal are audited one by one per `window_s`
    seconds; the rest are counted (`domicile_authz_refusals_unaudited_total`) and summarised in
    one `access_denied` entry (rule `rate_limited`) once the window is over, so that a flood of
    refused calls cannot fill the audit queue nor the log. An unauthenticated peer counts by
    its address without the port (each connection has a new port). At most `principals_max`
    principals are tracked; beyond that the rest share one window."""

    def __init__(
        self,
        metrics: NodeMetrics,
        audit: AuditSink,
        policy_version: Callable[[], str],
        *,
        per_window: int = REFUSALS_AUDITED_PER_WINDOW,
        window_s: float = REFUSAL_WINDOW_S,
        principals_max: int = REFUSAL_PRINCIPALS_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.audit = audit
        self.policy_version = policy_version
        self.per_window = per_window
        self.window_s = window_s
        self.principals_max = principals_max
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def record(self, refusal: Refusal) -> None:
        self.metrics.authz_refusals.labels(refusal.action, refusal.reason.value).inc()
        now = self.clock()
        window = self._window(_rate_key(refusal), now)
        if window.audited >= self.per_window:
            window.unaudited += 1
            window.by_action[refusal.action] = window.by_action.get(refusal.action, 0) + 1
            self.metrics.authz_refusals_unaudited.inc()
            return
        window.audited += 1
        log.warning("refused %s for %s: %s", refusal.action, refusal.identity, refusal.message)
        self._write(
            refusal.identity,
            refusal.namespace,
            refusal.reason.value,
            f"{refusal.action}: {refusal.message}",
        )

    def flush(self, *, everything: bool = False) -> None:
        """Summarises and forgets every window that is over (the daemon calls it periodically),
        or every window (`everything`, at stop)."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            if everything or now - window.start >= self.window_s:
                del self._windows[key]
                self._summarise(key, window)

    def _window(self, key: str, now: float) -> _Window:
        window = self._windows.get(key)
        if window is not None and now - window.start >= self.window_s:
            del self._windows[key]
            self._summarise(key, window)
            window = None
        if window is None:
            if len(self._windows) >= self.principals_max:
                self.flush()
            if len(self._windows) >= self.principals_max:
                key = OTHER_PRINCIPALS
                window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(now)
        return window

    def _summarise(self, key: str, window: _Window) -> None:
        if not window.unaudited:
            return
        actions = ", ".join(f"{a}={n}" for a, n in sorted(window.by_action.items()))
        detail = (
            f"{window.unaudited} more refusals in {self.window_s:.0f} s not audited one by one "
            f"(at most {self.per_window} per principal per window): {actions}"
        )
        log.warning("refusals of %s: %s", key, detail)
        self._write(key, "", RATE_LIMITED, detail)

    def _write(self, identity: str, namespace: str, rule: str, detail: str) -> None:
        try:
            self.audit.record(
                principal=identity[:IDENTITY_CHARS_MAX],
                action=Audit.ACCESS_DENIED,
                # As the caller sent it: bounded, since a refused request was never validated.
                namespace=namespace[:NAMESPACE_CHARS_MAX],
                decision="refuse",
                rule=rule,
                policy_version=self.policy_version(),
                detail=detail[:DETAIL_CHARS_MAX],
            )
        except DomicileError as error:
            # The call is refused either way; a full audit queue must not turn that into another error.
            log.error("refusal of %s not audited: %s", identity, error.message)


# The peer addresses grpc names a connection by (context.peer()): each connection has a port of
# its own, which the key leaves out.
_ADDRESS_KINDS = ("ipv4:", "ipv6:", "unix:", "unix-abstract:")


def _rate_key(refusal: Refusal) -> str:
    """The principal a refusal counts against: an unauthenticated peer by its address without
    the port ("ipv4:10.0.0.7:53312" -> "ipv4:10.0.0.7"); one that presented a certificate (a
    bad token over it) by that certificate's identity, whole."""
    identity = refusal.identity
    if refusal.reason is Reason.UNAUTHENTICATED and identity.startswith(_ADDRESS_KINDS):
        return identity.rpartition(":")[0] or identity
    return identity
