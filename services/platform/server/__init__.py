"""gRPC server bootstrap: interceptors, health, admin port, the service host."""
