"""A task's first turn: the prompt CreateTask was given, sent to the agent of the task's first
session once that session is ready (Foundry's `create_session_and_send`).

CreateTask records the prompt as a message of the first session in state `held`, in the task's
own insert transaction. Whichever transaction makes the session READY (the provisioning step that
creates the agent session, or `ensure_session`) moves it `held → queued` with a conditional update
under the task row lock and enqueues its DeliverMessage through the outbox in that same
transaction; from there it is an ordinary message (`sessions.deliver_message`). So it is queued
once however often those steps are redelivered, re-run or taken over by another replica, and the
outbox carries it across a restart. Its id is derived from the session, so a DeliverMessage that
is delivered twice asks the sandbox for the same turn id, which PromptSession answers with the
existing turn. A session that never becomes ready (provisioning failed, or it was closed first)
keeps its message held: it is never sent.
"""

from __future__ import annotations

import datetime as dt

from foundry.task.v1 import events_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from services.task.domain.models import QueuedMessage, Session, Task
from services.task.store import queries
from services.task.usecases.deps import Deps

HELD = "held"


def first_message_id(session_id: str) -> str:
    """The id (and sandbox turn id) of the first message of session `session_id`."""
    return f"m-first-{session_id.removeprefix('session-')}"


def first_message(task: Task, first: Session, *, user: str) -> QueuedMessage:
    """The task's prompt as the held first message of its first session (`user`: `users/{id}` or
    "" for a service caller)."""
    return QueuedMessage(
        id=first_message_id(first.id),
        session_id=first.id,
        task_id=task.id,
        text=task.prompt,
        attachments=[],
        user=user,
        state=HELD,
        created_at=task.created_at,
    )


async def release_held(session: AsyncSession, deps: Deps, row: Session, *, at: dt.datetime) -> bool:
    """Inside the transaction that makes `row` READY (task row locked): queue its held messages and
    enqueue their delivery; `row` becomes RUNNING on the first of them (the caller persists `row`).
    Returns whether any message was released."""
    released: list[QueuedMessage] = []
    for message in await queries.held_messages(session, session_id=row.id):
        if await queries.set_message_state(session, message_id=message.id, state="queued", expected=HELD):
            released.append(message)
            await deps.outbox.enqueue(
                session,
                queue=deps.queue("deliver_message"),
                message=events_pb2.DeliverMessage(name=f"{row.name}/messages/{message.id}"),
            )
    if not released:
        return False
    row.status, row.current_turn, row.thinking_since, row.used = "running", released[0].id, at, True
    return True
