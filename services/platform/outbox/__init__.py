"""Transactional outbox (writer + relay) and inbox (dedup) helpers.

outbox = Outbox(notify=relay.wake)
async with db.transaction() as session:
    ...change rows...
    await outbox.publish(session, routing_key="task.summary.updated", message=event)
"""

from services.platform.outbox.inbox import claim, prune, was_processed
from services.platform.outbox.relay import OutboxRelay, RelayPass
from services.platform.outbox.writer import Outbox

__all__ = ["Outbox", "OutboxRelay", "RelayPass", "claim", "prune", "was_processed"]
