"""Prometheus series of the watch hubs (one set per process, labelled by service and scope kind)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
BOOTSTRAP_SECONDS = Histogram(
    "foundry_watch_bootstrap_seconds",
    "Watch without a resume token: snapshot read and every page handed to the stream, until SNAPSHOT_END.",
    ["service", "kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RESUMES = Counter(
    "foundry_watch_resumes_total",
    "Watch calls with a resume token (reconnects), by outcome: replay (changes to send), "
    "caught_up (nothing missed) or reset (token rejected, too old or too new).",
    ["service", "kind", "outcome"],
)
