"""The domain: errors, the image model, configuration, references and ACLs (no I/O, no grpc)."""
