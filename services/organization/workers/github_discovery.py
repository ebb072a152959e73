"""Consumer of github-data's `github_data.user_accounts.changed` events (bound on the events
exchange): applies each user's GitHub account discovery once (inbox) and only if newer than the
applied version (`usecases.github_discovery.GithubDiscovery.apply_event`), then drops cached
membership answers so that joins and removals count at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from foundry.github_data.v1 import events_pb2 as gh_events_pb2

from services.organization.usecases.github_discovery import GithubDiscovery
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext

ROUTING_KEYS = ("github_data.user_accounts.changed",)


def handler(discovery: GithubDiscovery) -> Callable[[Message, HandlerContext], Awaitable[None]]:
    """The queue handler; database errors are retried by the Worker."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        event = gh_events_pb2.UserAccountsChanged.FromString(message.body)
        async with ctx.transaction() as session:
            applied = await discovery.apply_event(session, event)
        if applied:
            discovery.forget_memberships()

    return handle
