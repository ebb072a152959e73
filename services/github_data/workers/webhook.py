"""Work item HandleWebhookDelivery (queue `github_data.webhook`): apply one stored delivery once."""

from __future__ import annotations

from foundry.github_data.v1 import events_pb2

from services.github_data.usecases.deps import Deps
from services.github_data.usecases.webhooks import handle_delivery
from services.platform.errors import InvalidArgument
from services.platform.messaging import Handler, HandlerContext, Message


def handler(deps: Deps) -> Handler:
    """The queue handler; effects commit with the inbox row (redeliveries do nothing)."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        item = events_pb2.HandleWebhookDelivery.FromString(message.body)
        prefix = "webhookDeliveries/"
        if not item.name.startswith(prefix):
            raise InvalidArgument(f"bad delivery name {item.name!r}", reason="INVALID_NAME")
        await handle_delivery(deps, item.name.removeprefix(prefix), ctx.transaction)

    return handle
