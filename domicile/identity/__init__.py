"""Identity building blocks: the cluster CA and its certificates, SPIFFE IDs, bearer tokens and
gRPC credentials. Nothing here is wired into the daemons yet."""
