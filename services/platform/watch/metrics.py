"""Prometheus series of the watch hubs (one set per process, labelled by service and scope kind)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

STREAMS_OPEN = Gauge("foundry_watch_streams_open", "Watch streams currently open.", ["service", "kind"])
EVENTS_SENT = Counter(
    "foundry_watch_events_sent_total", "Watch events sent, by event kind.", ["service", "kind", "event"]
)
STREAM_ENDS = Counter(
    "foundry_watch_stream_ends_total",
    "Server-initiated stream ends, by reason (rotate, draining, lagging, expired, unauthorized).",
    ["service", "kind", "reason"],
)
RESETS = Counter(
    "foundry_watch_resets_total", "RESET events sent (token expired or invalid).", ["service", "kind"]
)
