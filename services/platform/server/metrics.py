"""Prometheus metrics shared by every gRPC server and the drain (exported on the admin port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HANDLED = Counter("foundry_grpc_server_handled_total", "RPCs completed", ["service", "method", "code"])
LATENCY = Histogram(
    "foundry_grpc_server_handling_seconds",
    "RPC duration (streams: until the stream ends)",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ACTIVE_RPCS = Gauge("foundry_grpc_server_active_rpcs", "RPCs in flight", ["service"])
DRAINING = Gauge("foundry_draining", "1 while the process drains", ["process"])
DRAIN_SECONDS = Histogram(
    "foundry_drain_duration_seconds",
    "Time from drain start to resources closed",
    ["process"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 45, 60),
)
