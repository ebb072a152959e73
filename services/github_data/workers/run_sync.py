"""Work item RunSync (queue `github_data.sync`): run or resume one organization's full sync."""

from __future__ import annotations

from foundry.github_data.v1 import events_pb2

from services.github_data.domain.names import parse_suffixed
from services.github_data.usecases.deps import Deps
from services.github_data.usecases.sync import run_sync
from services.platform.messaging import Handler, HandlerContext, Message


def handler(deps: Deps) -> Handler:
    """The queue handler; idempotent per (organization, generation) through the job's durable state."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        item = events_pb2.RunSync.FromString(message.body)
        await run_sync(deps, parse_suffixed(item.name, "syncStatus"), item.generation)

    return handle
