"""Shared plumbing for every service and the gateway: settings, logging, errors, database, messaging,
outbox/inbox, watch streams, gRPC server bootstrap and drain. It imports no service."""
