"""Prometheus metrics of the gateway (exported with the process's others on the admin port /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

UPSTREAM_STREAMS = Gauge(
    "foundry_gateway_upstream_streams", "Shared upstream Watch streams open", ["topic_type"]
)
SUBSCRIBERS = Gauge("foundry_gateway_subscribers", "Browser streams attached to a topic", ["topic_type"])
CONNECTIONS = Gauge("foundry_gateway_stream_connections", "Open browser SSE streams")
ACTIVE_REQUESTS = Gauge(
    "foundry_gateway_active_requests", "HTTP requests in flight, SSE streams included (the drain waits)"
)
UPSTREAM_CATCHUPS = Counter(
    "foundry_gateway_upstream_catchups_total",
    "Private upstream Watches that brought one subscriber from its own token to its shared upstream",
    ["topic_type"],
)
RECONNECTS = Counter(
    "foundry_gateway_upstream_reconnects_total", "Upstream Watch reopenings", ["topic_type", "cause"]
)
EVENTS_RENDERED = Counter(
    "foundry_gateway_events_rendered_total", "Upstream events rendered to JSON", ["topic_type"]
)
EVENTS_FANNED_OUT = Counter(
    "foundry_gateway_events_fanned_out_total", "Rendered events handed to browser streams", ["topic_type"]
)
STREAM_ENDS = Counter("foundry_gateway_stream_ends_total", "Browser streams ended by the gateway", ["reason"])
