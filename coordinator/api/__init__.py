"""The gRPC face of the coordinator: servicers, the error table and protobuf conversions.
Protobuf types go no further than this package."""
