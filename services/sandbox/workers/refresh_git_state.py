"""Handler of `<prefix>.sandbox.git_state` (RefreshGitStateWork): recompute and cache a sandbox's git
state, publishing `sandbox.git_state.updated`. Recomputing twice is harmless, so no inbox is used;
a sandbox without a checkout (destroyed, never prepared) is skipped."""

from __future__ import annotations

from foundry.sandbox.v1 import events_pb2

from services.platform.errors import FailedPrecondition, NotFound
from services.platform.logging import get_logger
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import Handler, HandlerContext
from services.sandbox.domain import names
from services.sandbox.usecases.checkout import Checkouts

log = get_logger(__name__)


def handler(checkouts: Checkouts) -> Handler:
    async def handle(message: Message, ctx: HandlerContext) -> None:
        work = events_pb2.RefreshGitStateWork.FromString(message.body)
        key = names.git_state(work.name)
        try:
            await checkouts.refresh(key)
        except (NotFound, FailedPrecondition) as exc:
            log.info("git_state_refresh_skipped", sandbox=key.name, reason=exc.message)

    return handle
