"""The gate keeps allowed decisions by the identity of the principal and resource objects it is
given: a repeated call is allowed without a Cedar evaluation, but a refusal is decided (and
counted) every time, another resource object is decided anew, and a new policy set drops every
kept decision."""

from __future__ import annotations

from domicile.authz.authorizer import Authorizer
from domicile.authz.gate import Caller, Gate, Refusal
from domicile.authz.loader import DEFAULT_POLICIES, DEFAULT_SCHEMA, default_text
from domicile.authz.model import NamespaceResource
from domicile.errors import PermissionDenied
from domicile.identity.principal import Principal, PrincipalKind, Role

CLUSTER = "domicile"
APP = "crm"
PURPOSE = "account_management"


def caller(purpose: str = PURPOSE) -> Caller:
    uri = f"spiffe://{CLUSTER}/client/{APP}"
    principal = Principal(PrincipalKind.CLIENT, CLUSTER, uri, name=APP, roles=frozenset({Role.APP}))
    return Caller(uri, principal, purpose)


def resource(owner: str = APP) -> NamespaceResource:
    return NamespaceResource("customers", "eu-west-1", "personal", owner, (PURPOSE,))


def gate(refusals: list[Refusal]) -> Gate:
    return Gate(cluster=CLUSTER, authorizer=Authorizer.default(CLUSTER), on_refusal=refusals.append)


class CountingAuthorizer(Authorizer):
    """The default policies, counting the decisions that reach Cedar."""

    evaluations = 0

    def authorize(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        CountingAuthorizer.evaluations += 1
        return super().authorize(*args, **kwargs)


def test_a_repeated_allowed_call_is_decided_once() -> None:
    authorizer = CountingAuthorizer.from_text(default_text(DEFAULT_POLICIES), default_text(DEFAULT_SCHEMA))
    CountingAuthorizer.evaluations = 0
    g = Gate(cluster=CLUSTER, authorizer=authorizer)
    c, r = caller(), resource()
    for _ in range(5):
        assert g.authorize(c, "storage.Put", r) is c
    assert CountingAuthorizer.evaluations == 1


def test_a_refusal_is_decided_and_counted_every_time() -> None:
    refusals: list[Refusal] = []
    g = gate(refusals)
    c, r = caller(purpose="marketing"), resource()
    for _ in range(3):
        try:
            g.authorize(c, "storage.Put", r)
        except PermissionDenied:
            continue
        raise AssertionError("a call for an undeclared purpose was allowed")
    assert [x.reason.value for x in refusals] == ["policy"] * 3


def test_another_resource_object_is_decided_anew() -> None:
    refusals: list[Refusal] = []
    g = gate(refusals)
    c = caller()
    g.authorize(c, "storage.Put", resource())
    # The same namespace name, now owned by someone else (a new topology): refused.
    try:
        g.authorize(c, "storage.Put", resource(owner="someone-else"))
    except PermissionDenied:
        assert len(refusals) == 1
        return
    raise AssertionError("a decision for one resource object answered for another")


def test_a_new_policy_set_drops_the_kept_decisions() -> None:
    refusals: list[Refusal] = []
    g = gate(refusals)
    c, r = caller(), resource()
    g.authorize(c, "storage.Put", r)
    # Policies that allow nothing but node calls: the same objects are now refused.
    nodes_only = '@id("nodes-only")\npermit (principal in Domicile::Role::"node", action, resource);\n'
    g.replace_authorizer(Authorizer.distributed(nodes_only, "test", CLUSTER))
    try:
        g.authorize(c, "storage.Put", r)
    except PermissionDenied:
        assert len(refusals) == 1
        return
    raise AssertionError("a decision of the old policy set answered under the new one")
