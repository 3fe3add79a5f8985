"""Authorization with Cedar policies: who may call which RPC, on what, for which purpose.

`Authorizer.from_files(policies, schema)` loads and validates a policy set;
`authorize(principal, action, resource, context)` returns an AuthzDecision, and `require`
raises PermissionDenied on a refusal. gate.py applies it to every RPC of the daemons.
"""

from domicile.authz.actions import ACTIONS, ActionSpec, ResourceKind, action, action_for_method
from domicile.authz.authorizer import Authorizer
from domicile.authz.model import (
    AuthzDecision,
    ClusterResource,
    NamespaceResource,
    Principal,
    PrincipalKind,
    RegionResource,
    RequestContext,
    Resource,
    Role,
)

__all__ = [
    "ACTIONS",
    "ActionSpec",
    "Authorizer",
    "AuthzDecision",
    "ClusterResource",
    "NamespaceResource",
    "Principal",
    "PrincipalKind",
    "RegionResource",
    "RequestContext",
    "Resource",
    "ResourceKind",
    "Role",
    "action",
    "action_for_method",
]
