"""Generated protobuf and gRPC code for imagegw.v1 (scripts/gen-protos)."""
