"""Consumer of task and github-data events (bound on the events exchange): applies each to the
organization summary projection, once (inbox) and only if newer than the applied version."""

from __future__ import annotations

import time

from prometheus_client import Histogram

from services.organization.usecases.projection import apply_event
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext

PROJECTION_UPDATE = Histogram(
    "foundry_projection_update_seconds",
    "One event applied to the organization summary projection, commit included, by routing key and "
    "outcome (applied, or stale: a repeated or older version)",
    ["projection", "routing_key", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


async def handle(message: Message, ctx: HandlerContext) -> None:
    """Apply `message` (routing key + serialized event). Malformed events raise InvalidArgument and
    are dead-lettered; database errors are retried by the Worker."""
    started = time.perf_counter()
    async with ctx.transaction() as session:
        applied = await apply_event(session, routing_key=message.routing_key, body=message.body)
    PROJECTION_UPDATE.labels(
        "organization_summary", message.routing_key, "applied" if applied else "stale"
    ).observe(time.perf_counter() - started)
