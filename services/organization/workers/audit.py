"""Consumer of the `organization.audit` work queue: appends AppendAuditEvent items to the audit log."""

from __future__ import annotations

from foundry.organization.v1 import events_pb2 as org_events
from google.protobuf.message import DecodeError

from services.organization.domain.errors import DOMAIN
from services.organization.usecases import audit
from services.platform.errors import InvalidArgument
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext


async def handle(message: Message, ctx: HandlerContext) -> None:
    """Store the event once (inbox on the message id, plus the sender's event id)."""
    try:
        item = org_events.AppendAuditEvent.FromString(message.body)
    except DecodeError as exc:
        raise InvalidArgument(
            f"undecodable AppendAuditEvent: {exc}", domain=DOMAIN, reason="MALFORMED_MESSAGE"
        ) from exc
    # Nobody waits on the audit log: let projection writes (which watchers wait on) go first.
    async with ctx.transaction(background=True) as session:
        await audit.append(session, item, fallback_id=message.message_id)
