"""SPIFFE IDs of a Domicile cluster: the one printable identity of every node, coordinator and client.

    spiffe://<cluster>/region/<region>/node/<node_id>
    spiffe://<cluster>/coordinator
    spiffe://<cluster>/client/<name>

The cluster is the SPIFFE trust domain. Names are restricted further than SPIFFE requires so
that every ID also fits in a DNS name (see `server_name`) and in a log line without quoting.
"""

from __future__ import annotations

import re

from domicile.errors import InvalidArgument, Unauthenticated
from domicile.identity.principal import Principal, PrincipalKind

SCHEME = "spiffe://"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
CLUSTER_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\Z")
# Short enough that the longest server name stays within DNS's 253 characters.
CLUSTER_MAX = 100
REGION_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# Never resolves (RFC 2606), so a server name made from an identity cannot be confused with a
# real host: it exists only to be matched against a certificate's DNS SANs.
SERVER_NAME_SUFFIX = "domicile.invalid"


def check_cluster(cluster: str) -> str:
    if len(cluster) > CLUSTER_MAX or not CLUSTER_RE.match(cluster):
        raise InvalidArgument(
            f"cluster name {cluster!r} is not allowed: use lowercase letters, digits, '-' and '.' "
            f"(DNS labels), at most {CLUSTER_MAX} characters"
        )
    return cluster


def check_region(region: str) -> str:
    if not REGION_RE.match(region):
        raise InvalidArgument(
            f"region {region!r} is not allowed: 1 to 63 of a-z 0-9 '-', starting with a letter"
        )
    return region


def check_node_id(node_id: str) -> str:
    if not NODE_ID_RE.match(node_id):
        raise InvalidArgument(
            f"node id {node_id!r} is not allowed: 1 to 63 of a-z 0-9 '-', starting with a letter or digit"
        )
    return node_id


def check_client_name(name: str) -> str:
    if not CLIENT_NAME_RE.match(name):
        raise InvalidArgument(
            f"client name {name!r} is not allowed: 1 to 128 of A-Z a-z 0-9 '.' '_' '-', "
            "starting with a letter or digit"
        )
    return name


def node_id_uri(cluster: str, region: str, node_id: str) -> str:
    return f"{SCHEME}{check_cluster(cluster)}/region/{check_region(region)}/node/{check_node_id(node_id)}"


def coordinator_uri(cluster: str) -> str:
    return f"{SCHEME}{check_cluster(cluster)}/coordinator"


def client_uri(cluster: str, name: str) -> str:
    return f"{SCHEME}{check_cluster(cluster)}/client/{check_client_name(name)}"


def server_name(kind: PrincipalKind, cluster: str, region: str = "", node_id: str = "") -> str:
    """The DNS name a server certificate carries for its identity.

    gRPC in Python cannot show a dialer the server's certificate, but it checks the certificate
    against the name the dialer asks for (`grpc.ssl_target_name_override`). Putting the identity
    into a DNS SAN lets a dialer insist on "node X of region R" during the handshake itself.
    """
    if kind is PrincipalKind.NODE:
        node = f"{check_node_id(node_id)}.{check_region(region)}"
        return f"{node}.node.{check_cluster(cluster)}.{SERVER_NAME_SUFFIX}"
    if kind is PrincipalKind.COORDINATOR:
        return f"coordinator.{check_cluster(cluster)}.{SERVER_NAME_SUFFIX}"
    raise InvalidArgument("clients do not serve: only nodes and the coordinator have a server name")


def parse_uri(uri: str, cluster: str) -> Principal:
    """The principal a SPIFFE ID names, without roles. Refuses another cluster and any other path."""
    if not uri.startswith(SCHEME):
        raise Unauthenticated(f"identity {uri!r} is not a SPIFFE ID (spiffe://...)")
    domain, _, path = uri[len(SCHEME) :].partition("/")
    if domain != cluster:
        raise Unauthenticated(f"identity {uri!r} belongs to cluster {domain!r}, not to {cluster!r}")
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "region" and parts[2] == "node":
        region, node_id = parts[1], parts[3]
        if REGION_RE.match(region) and NODE_ID_RE.match(node_id):
            return Principal(PrincipalKind.NODE, cluster, uri, region=region, node_id=node_id)
    elif parts == ["coordinator"]:
        return Principal(PrincipalKind.COORDINATOR, cluster, uri)
    elif len(parts) == 2 and parts[0] == "client" and CLIENT_NAME_RE.match(parts[1]):
        return Principal(PrincipalKind.CLIENT, cluster, uri, name=parts[1])
    raise Unauthenticated(
        f"identity {uri!r} has a malformed path: expected /region/<region>/node/<node_id>, "
        "/coordinator or /client/<name>"
    )
