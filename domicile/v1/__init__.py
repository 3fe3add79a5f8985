"""Generated protobuf and gRPC code for domicile.v1: do not edit, run scripts/gen_protos.py."""
