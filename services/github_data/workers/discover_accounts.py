"""Work item DiscoverUserAccounts (queue `github_data.user_accounts`): read the GitHub accounts a
user's stored token sees and publish them (`usecases.user_accounts.discover`)."""

from __future__ import annotations

from foundry.github_data.v1 import events_pb2

from services.github_data.domain.names import parse_user
from services.github_data.usecases.deps import Deps
from services.github_data.usecases.user_accounts import discover
from services.platform.messaging import Handler, HandlerContext, Message


def handler(deps: Deps, *, max_attempts: int) -> Handler:
    """The queue handler; `max_attempts` is the queue's delivery limit (the last one records failure)."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        item = events_pb2.DiscoverUserAccounts.FromString(message.body)
        user_id = parse_user(item.user, "user").removeprefix("users/")
        await discover(deps, user_id, ctx, max_attempts=max_attempts)

    return handle
