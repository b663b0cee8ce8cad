"""gRPC plumbing both servers share: the one status table, proto<->domain conversion,
the server factory and its metrics."""
