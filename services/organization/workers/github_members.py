"""Consumer of github-data's GitHub member events (`github_data.member.changed` / `.removed`, bound
on the events exchange): applies each to the member rows once (inbox) and only if newer than the
applied version (`usecases.members.GithubMembers`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.organization.usecases.members import GithubMembers
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext


def handler(members: GithubMembers) -> Callable[[Message, HandlerContext], Awaitable[None]]:
    """The queue handler. Malformed events raise InvalidArgument and are dead-lettered; database
    errors are retried by the Worker."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        async with ctx.transaction() as session:
            await members.apply(session, routing_key=message.routing_key, body=message.body)

    return handle
