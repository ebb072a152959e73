"""Consumer of task and github-data events (bound on the events exchange): applies each to the
organization summary projection, once (inbox) and only if newer than the applied version."""

from __future__ import annotations

from services.organization.usecases.projection import apply_event
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext


async def handle(message: Message, ctx: HandlerContext) -> None:
    """Apply `message` (routing key + serialized event). Malformed events raise InvalidArgument and
    are dead-lettered; database errors are retried by the Worker."""
    async with ctx.transaction() as session:
        await apply_event(session, routing_key=message.routing_key, body=message.body)
