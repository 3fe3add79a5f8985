"""gRPC servicers: validate, call the domain, map errors. Protobuf types stop here."""
