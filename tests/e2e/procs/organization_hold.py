"""The organization service with one test hook, for tests/e2e/test_kill_organization.py:
`python -m tests.e2e.procs.organization_hold` (what `Cluster(modules={"organization": ...})` runs).

While the file named by `E2E_HOLD_FLAG` exists, the hook holds, each forever (only kill -9 ends
them), the first deliveries this process handles of:

- the `audit` queue: one held *before* its handler runs (nothing of it is committed), then one
  held *after* its transaction committed (inbox row and audit entry) and before the Worker acks;
- the `summary_events` queue: the first `task.summary.updated` delivery, held after its commit.

Each is logged as `e2e_held` (queue, when, message id and what the message is about) when the hold
starts. A kill -9 then leaves both hard cases for "exactly once in effect": work RabbitMQ must
deliver again, and a committed effect whose message it delivers again.

Everything else is the unmodified service (`services.organization.app.wire`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from foundry.organization.v1 import events_pb2 as org_events
from foundry.task.v1 import events_pb2 as task_events

from services.organization import app
from services.organization.workers import audit, summary_events
from services.platform.logging import get_logger
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext
from services.platform.service_main import service_main

Handler = Callable[[Message, HandlerContext], Awaitable[None]]
BEFORE, AFTER = "before_commit", "after_commit"
FLAG = os.environ.get("E2E_HOLD_FLAG", "")
log = get_logger("e2e.organization_hold")


def _about(message: Message) -> dict[str, Any]:
    """What the message is about, for the test to find its effect."""
    if message.routing_key == "task.summary.updated":
        event = task_events.TaskSummaryChanged.FromString(message.body)
        return {"task": event.name, "version": event.version}
    if message.routing_key.endswith(".audit.appended"):
        item = org_events.AppendAuditEvent.FromString(message.body)
        entry = item.audit_event
        return {"task": entry.task, "kind": entry.kind, "create_us": entry.create_time.ToMicroseconds()}
    return {}


def _holding(handle: Handler, *, holds: list[str], routing_key: str | None = None) -> Handler:
    """`handle`, holding the first matching deliveries (one per entry of `holds`, in order) while
    FLAG exists."""
    pending = list(holds)

    async def hold(message: Message, ctx: HandlerContext, when: str) -> None:
        pending.remove(when)
        log.info(
            "e2e_held",
            queue=ctx.queue,
            when=when,
            message_id=message.message_id,
            routing_key=message.routing_key,
            **_about(message),
        )
        await asyncio.Event().wait()  # never settled: only kill -9 ends this

    def armed(message: Message) -> bool:
        matches = routing_key is None or message.routing_key == routing_key
        return matches and bool(FLAG) and os.path.exists(FLAG)

    async def wrapped(message: Message, ctx: HandlerContext) -> None:
        if pending and pending[0] == BEFORE and armed(message):
            await hold(message, ctx, BEFORE)
        await handle(message, ctx)  # its own transaction: committed on return
        if pending and pending[0] == AFTER and armed(message):
            await hold(message, ctx, AFTER)

    return wrapped


summary_events.handle = _holding(summary_events.handle, holds=[AFTER], routing_key="task.summary.updated")
audit.handle = _holding(audit.handle, holds=[BEFORE, AFTER])

if __name__ == "__main__":
    sys.exit(service_main("organization", app.wire))
