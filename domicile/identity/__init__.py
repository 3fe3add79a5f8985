"""Identity: the cluster CA and its certificates, SPIFFE IDs, bearer tokens, and the one seam
(credentials.py, chosen by transport.py) that secures every gRPC port and channel."""
