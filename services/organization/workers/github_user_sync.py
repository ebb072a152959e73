"""Consumer of `organization.github_user_sync` (SyncGithubUser, written by SignInWithGithub).

GitHub is read outside any transaction; the result is applied in one inbox-deduplicated transaction,
so a redelivered message changes nothing (and one whose effect already committed is skipped before
GitHub is asked again). A rate limit or 5xx is raised for the Worker's delayed retry until the
queue's last attempt; then, as for errors that retrying cannot fix (revoked token), the failure is
recorded on the user (`GithubDiscovery.record_failure`) and the message is acknowledged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from foundry.organization.v1 import events_pb2

from services.organization.domain.names import parse_user
from services.organization.usecases.github_discovery import GithubDiscovery
from services.platform.db import Database
from services.platform.errors import FoundryError
from services.platform.logging import get_logger
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext
from services.platform.outbox.inbox import was_processed

log = get_logger(__name__)


def handler(
    discovery: GithubDiscovery, db: Database, *, max_attempts: int
) -> Callable[[Message, HandlerContext], Awaitable[None]]:
    """The queue handler; `max_attempts` is the queue's delivery limit (the last one records failure)."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        user_id = parse_user(events_pb2.SyncGithubUser.FromString(message.body).user, "user")
        if await _already_applied(db, ctx):
            return
        await discovery.mark_running(user_id)
        try:
            found = await discovery.discover(user_id)
        except FoundryError as exc:
            if exc.retryable and ctx.attempt < max_attempts:
                raise
            log.error(
                "github_discovery_failed",
                user=user_id,
                reason=exc.reason,
                error=exc.message,
                attempt=ctx.attempt,
            )
            async with ctx.transaction() as session:
                await discovery.record_failure(session, user_id=user_id, error=exc.message)
            return
        async with ctx.transaction() as session:
            organizations = await discovery.apply(session, user_id=user_id, found=found)
        discovery.forget_memberships()
        log.info("github_discovery_applied", user=user_id, organizations=organizations)

    return handle


async def _already_applied(db: Database, ctx: HandlerContext) -> bool:
    async with db.snapshot() as session:
        return await was_processed(session, consumer=ctx.consumer, message_id=ctx.message.message_id)
