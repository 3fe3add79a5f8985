"""authz explain: what the authorization policies decide for one principal, action and resource.

The policies are --policies FILE (validated against --schema FILE, or the packaged schema) or
the packaged default set, which is the same as deploy/authz/policies.cedar. The namespace's
classification, owner and purposes come from --cluster-config (purposes are in the cluster
config only, not in the coordinator's topology). Nothing is sent to the cluster.

Exit codes: 0 allowed, 1 refused, 2 bad input.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from domicile.cli.output import print_json
from domicile.errors import InvalidArgument

# domicile.authz (and Cedar with it) is imported on use: other commands should not pay for it.
if TYPE_CHECKING:
    from domicile.authz import Authorizer, AuthzDecision, Principal, RequestContext, Resource
    from domicile.cluster import ClusterSpec

EXIT_ALLOWED = 0
EXIT_REFUSED = 1


def add_parser(sub: Any) -> None:
    authz = sub.add_parser("authz", help="inspect the authorization policies (Cedar)")
    actions = authz.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = actions.add_parser(
        "explain",
        help="what the authorization policies decide for a principal, an RPC and a resource, and why",
        description="Print the decision, the @ids of the policies that made it and, for a refusal, "
        "what would allow the call. Record RPCs (storage.Put, Get, Delete, Scan) act on --namespace "
        "at --region (default: the first region of its scope); other RPCs served by a node act on "
        "--region; the coordinator's RPCs act on the cluster. Nothing is sent to the cluster. "
        "Exit 0 allowed, 1 refused, 2 bad input.",
    )
    p.add_argument(
        "--principal",
        required=True,
        metavar="ID",
        help="identity: spiffe://<cluster>/<kind>/<name> or a token subject",
    )
    p.add_argument(
        "--role",
        action="append",
        required=True,
        metavar="ROLE",
        help="app, dpo, auditor, operator, monitor or node (repeatable)",
    )
    p.add_argument("--kind", help="client, node or coordinator (default: from the SPIFFE id, else client)")
    p.add_argument("--action", required=True, help="an RPC as <service>.<Rpc>, e.g. storage.Put")
    p.add_argument("--namespace", "-n", help="the namespace of a record RPC")
    p.add_argument("--region", "-r", help="the region serving the call")
    p.add_argument("--purpose", default="", help="the purpose the principal declares (default: none)")
    p.add_argument("--policies", metavar="FILE", help="Cedar policies (default: the packaged default set)")
    p.add_argument(
        "--schema", metavar="FILE", help="Cedar schema, .cedarschema or .json (default: the packaged one)"
    )
    p.add_argument(
        "--cluster-config",
        default="deploy/cluster.yaml",
        metavar="FILE",
        help="the namespaces and regions (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the decision as one JSON object")


def _authorizer(args: argparse.Namespace) -> Authorizer:
    from domicile.authz import Authorizer

    if args.policies:
        return Authorizer.from_files(args.policies, args.schema)
    if args.schema:
        raise InvalidArgument("--schema needs --policies: the packaged policies go with the packaged schema")
    return Authorizer.default()


def _resource(args: argparse.Namespace, cluster: ClusterSpec) -> Resource:
    from domicile.authz import ClusterResource, NamespaceResource, RegionResource, ResourceKind, action

    spec = action(args.action)
    if spec.resource_kind is ResourceKind.NAMESPACE:
        if not args.namespace:
            raise InvalidArgument(f"{spec.name} acts on a namespace: pass --namespace")
        namespace = cluster.namespace(args.namespace)
        scope = namespace.regions or tuple(cluster.region_names())
        if not (args.region or scope):
            raise InvalidArgument(f"the cluster config names no region: pass --region for {spec.name}")
        region = args.region or scope[0]
        return NamespaceResource.in_cluster(cluster, args.namespace, region)
    if args.namespace:
        raise InvalidArgument(
            f"{spec.name} acts on a {spec.resource_kind.value}, not a namespace: leave out --namespace"
        )
    if spec.resource_kind is ResourceKind.REGION:
        if not args.region:
            raise InvalidArgument(f"{spec.name} is served by a region's node: pass --region")
        if cluster.region(args.region) is None:
            raise InvalidArgument(
                f"unknown region {args.region!r}; regions: {', '.join(cluster.region_names())}"
            )
        return RegionResource(args.region)
    if args.region:
        raise InvalidArgument(f"{spec.name} is served by the coordinator, not a region: leave out --region")
    return ClusterResource()


def resource_json(resource: Resource) -> dict[str, Any]:
    from domicile.authz import NamespaceResource, RegionResource

    if isinstance(resource, NamespaceResource):
        return {
            "type": "namespace",
            "name": resource.name,
            "region": resource.region,
            "classification": resource.classification,
            "owner": resource.owner,
            "purposes": list(resource.purposes),
        }
    if isinstance(resource, RegionResource):
        return {"type": "region", "name": resource.name}
    return {"type": "cluster", "name": resource.name}


def resource_text(resource: Resource) -> str:
    from domicile.authz import NamespaceResource, RegionResource

    if isinstance(resource, NamespaceResource):
        purposes = ", ".join(resource.purposes) or "any (no limitation)"
        return (
            f"namespace {resource.name} at {resource.region} ({resource.classification}, "
            f"owner {resource.owner or '-'}, purposes: {purposes})"
        )
    if isinstance(resource, RegionResource):
        return f"region {resource.name}"
    return f"cluster {resource.name}"


def explanation_json(
    decision: AuthzDecision,
    principal: Principal,
    resource: Resource,
    context: RequestContext,
    authorizer: Authorizer,
) -> dict[str, Any]:
    return {
        "decision": "allow" if decision.allowed else "deny",
        "allowed": decision.allowed,
        "policy_ids": list(decision.policy_ids),
        "reason": decision.reason,
        "errors": list(decision.errors),
        "principal": principal.identity,
        "kind": principal.kind.value,
        "name": principal.name,
        "roles": principal.role_names(),
        "purpose": context.purpose,
        "action": decision.action,
        "action_classes": list(authorizer.action_classes(decision.action)),
        "resource": resource_json(resource),
        "policies_source": authorizer.bundle.policies_source,
        "schema_source": authorizer.bundle.schema_source,
    }


def explanation_text(
    decision: AuthzDecision,
    principal: Principal,
    resource: Resource,
    context: RequestContext,
    authorizer: Authorizer,
) -> str:
    roles = ", ".join(principal.role_names()) or "-"
    classes = ", ".join(authorizer.action_classes(decision.action)) or "-"
    lines = [
        f"{decision.action} by {principal.identity}",
        f"decision:   {'allow' if decision.allowed else 'deny'}",
        f"policies:   {', '.join(decision.policy_ids) or '-'}",
        f"reason:     {decision.reason}",
        f"principal:  {principal.kind.value} {principal.name}, roles: {roles}",
        f"purpose:    {context.purpose or '-'}",
        f"action:     {decision.action} (class {classes})",
        f"resource:   {resource_text(resource)}",
        f"policy set: {authorizer.bundle.policies_source} (schema: {authorizer.bundle.schema_source})",
    ]
    lines.extend(f"error:      {e}" for e in decision.errors)
    return "\n".join(lines)


def explain(args: argparse.Namespace) -> int:
    from domicile.authz import Principal, RequestContext
    from domicile.cluster import load_cluster

    # Every input is checked before the policies are asked, so that a typo is exit 2, never a refusal.
    principal = Principal.of(args.principal, args.role, args.kind or "")
    context = RequestContext(args.purpose)
    resource = _resource(args, load_cluster(args.cluster_config))
    authorizer = _authorizer(args)
    decision = authorizer.authorize(principal, args.action, resource, context)
    if args.json:
        print_json(explanation_json(decision, principal, resource, context, authorizer))
    else:
        print(explanation_text(decision, principal, resource, context, authorizer))
    return EXIT_ALLOWED if decision.allowed else EXIT_REFUSED
