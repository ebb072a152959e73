"""`foundryctl`: the mesh's command-line client (gRPC to the services, sign-in through the gateway)."""
