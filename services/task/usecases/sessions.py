"""Session use cases: create, send a message, rename, and the background steps that make a session
ready and deliver its messages (stop, close and change model: `session_commands`)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from foundry.sandbox.v1 import agent_session_pb2 as sb_session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.task.v1 import events_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import context
from services.platform.errors import FoundryError
from services.platform.logging import get_logger
from services.platform.paging import offset_page
from services.task import convert
from services.task.domain import names
from services.task.domain.errors import (
    DOMAIN,
    SessionNotFound,
    SessionNotReady,
    TaskEnded,
    TaskNotFound,
    require,
)
from services.task.domain.models import (
    MESSAGE_ACCEPTING,
    RECOVERABLE_STATUSES,
    Owner,
    QueuedMessage,
    Session,
    Task,
    UserSessionState,
    now,
)
from services.task.store import queries
from services.task.usecases import first_turn
from services.task.usecases.agents import check_agent
from services.task.usecases.changes import Audit, task_changed
from services.task.usecases.deps import Deps
from services.task.usecases.tasks import caller_user_id

log = get_logger(__name__)
ENDED_MESSAGE_STATES = ("completed", "failed", "interrupted", "cancelled")
OPEN_MESSAGE_STATES = ("queued", "delivered")  # the turn has not ended (as far as this service knows)
ENDED_TURN_STATES = (
    sb_session_pb2.TURN_STATE_COMPLETED,
    sb_session_pb2.TURN_STATE_CANCELLED,
    sb_session_pb2.TURN_STATE_FAILED,
    sb_session_pb2.TURN_STATE_INTERRUPTED,
)


async def _task_locked(session: AsyncSession, org: str, task_id: str) -> Task:
    task = await queries.get_task(session, task_id=task_id, organization=org, lock=True)
    if task is None:
        raise TaskNotFound(f"organizations/{org}/tasks/{task_id}")
    return task


async def _session_of(session: AsyncSession, name: str, task_id: str, session_id: str) -> Session:
    row = await queries.get_session(session, task_id=task_id, session_id=session_id)
    if row is None:
        raise SessionNotFound(name)
    return row


def _not_ended(task: Task) -> None:
    if task.ended or task.status.startswith(("archive_", "kill_")):
        raise TaskEnded(task.name, task.status)


async def create_session(
    deps: Deps, *, parent: str, display_name: str, agent: str, model: str, request_id: str
) -> Session:
    """A new session, PENDING_PROVISION (no sandbox yet) or PENDING_SESSION_CREATE; it becomes the
    caller's active tab. Errors: NotFound, FailedPrecondition (`TASK_ENDED`, `AGENT_NOT_INSTALLED`,
    `AGENT_CREDENTIALS_MISSING`), InvalidArgument (an agent this mesh does not have, a model the
    agent does not offer)."""
    org, task_id = names.task(parent, "parent")
    agent_id = names.agent(agent, "session.agent")
    require(len(display_name) <= 200, "session.display_name", "must be at most 200 characters")
    await deps.membership.require(f"organizations/{org}")
    if model and not agent_id:  # the model is checked against the agent the session inherits
        async with deps.db.snapshot() as session:
            inherited = await queries.get_task(session, task_id=task_id, organization=org)
        agent_id = inherited.agent if inherited is not None else ""
    await check_agent(
        deps, agent_id, "session.agent", model=model, model_field="session.model", organization=org
    )
    user_id = caller_user_id()
    async with deps.db.transaction() as session:
        task = await _task_locked(session, org, task_id)
        if request_id:
            existing = await queries.find_session_by_request(session, task_id=task_id, request_id=request_id)
            if existing is not None:
                return existing
        _not_ended(task)
        position = await queries.next_session_position(session, task_id=task_id)
        at = now()
        ready_task = task.stage == "ready"
        row = Session(
            id=f"session-{uuid.uuid4()}",
            task_id=task_id,
            organization=org,
            position=position,
            display_name=display_name.strip() or f"Session {position}",
            agent=agent_id or task.agent,
            model=model,
            status="pending_session_create" if task.sandbox_state else "pending_provision",
            request_id=request_id or None,
            created_at=at,
            updated_at=at,
        )
        await queries.insert_session(session, row=row)
        states = []
        if user_id:
            await queries.put_user_task_state(
                session, task_id=task_id, user_id=user_id, active_session=row.id, at=at
            )
            states.append(await queries.get_user_task_state(session, task_id=task_id, user_id=user_id))
        await task_changed(session, deps, task, changed_sessions=[row], user_states=states)
        if ready_task:
            await deps.outbox.enqueue(
                session, queue=deps.queue("ensure_session"), message=events_pb2.EnsureSession(name=row.name)
            )
    return row


async def get_session(deps: Deps, name: str) -> tuple[Session, bool]:
    """The session and the caller's unread flag. Errors: NotFound."""
    org, task_id, session_id = names.session(name)
    await deps.membership.require(f"organizations/{org}")
    user_id = caller_user_id()
    async with deps.db.snapshot() as session:
        row = await _session_of(session, name, task_id, session_id)
        state = await queries.get_user_task_state(session, task_id=task_id, user_id=user_id)
    return row, any(s.session_id == session_id and s.unread for s in state.sessions)


async def list_sessions(
    deps: Deps, *, parent: str, show_closed: bool, page_size: int, page_token: str
) -> tuple[list[Session], str]:
    org, task_id = names.task(parent, "parent")
    offset, size = offset_page(page_size, page_token, default=50, maximum=500, domain=DOMAIN)
    await deps.membership.require(f"organizations/{org}")
    async with deps.db.snapshot() as session:
        if await queries.get_task(session, task_id=task_id, organization=org) is None:
            raise TaskNotFound(parent)
        rows = await queries.list_sessions(session, task_id=task_id, include_closed=show_closed)
    page = rows[offset : offset + size]
    return page, str(offset + size) if offset + size < len(rows) else ""


async def ensure_session(deps: Deps, name: str) -> None:
    """Background: create the agent session of a pending session (READY), or record ERROR.
    Waits for provisioning (which enqueues this again when it is ready)."""
    org, task_id, session_id = names.session(name)
    async with deps.db.snapshot() as session:
        task = await queries.get_task(session, task_id=task_id)
        row = await queries.get_session(session, task_id=task_id, session_id=session_id)
    if (
        task is None
        or row is None
        or row.closed
        or not row.status.startswith("pending")
        or task.stage != "ready"
    ):
        return
    model = row.model
    try:
        permission_policy = await deps.organization.permission_policy(organization=org)
        environment = await deps.organization.model_credentials(organization=org)
        started = await deps.sandbox.start_agent_session(
            sb_pb2.StartAgentSessionRequest(
                parent=task.sandbox_name,
                session_id=row.id,
                agent=f"agents/{row.agent}" if row.agent else "",
                model=model,
                permission_policy=permission_policy,
                environment=environment,
            ),
            deadline=deps.step_timeout,
        )
        result: dict[str, Any] = {
            "status": "ready",
            "sandbox_session": started.agent_session.name,
            "error_message": "",
        }
    except FoundryError as exc:
        if exc.retryable:
            raise
        result = {"status": "error", "error_message": f"creating the agent session failed: {exc.message}"}
    async with deps.db.transaction() as session:
        task = await _task_locked(session, org, task_id)
        row = await _session_of(session, name, task_id, session_id)
        if row.closed or not row.status.startswith("pending"):
            return
        for key, value in result.items():
            setattr(row, key, value)
        row.updated_at = now()
        if row.status == "ready":
            row.agent_model = model
            if row.model != model:  # ChangeModel while the agent was starting
                row.command_at = row.updated_at
                await deps.outbox.enqueue(
                    session,
                    queue=deps.queue("session_command"),
                    message=events_pb2.RunSessionCommand(
                        name=row.name, command=events_pb2.SESSION_COMMAND_SET_MODEL, model=row.model
                    ),
                )
        if row.status == "ready":
            await first_turn.release_held(session, deps, row, at=row.updated_at)
        await queries.update_session(session, row=row)
        await task_changed(session, deps, task, changed_sessions=[row])


async def send_message(
    deps: Deps, *, name: str, text: str, attachments: list[dict[str, Any]], request_id: str
) -> tuple[Session, QueuedMessage]:
    """Queue a message (durably) and return; the session is RUNNING until its turn ends. The sender
    becomes the owner and the session their active tab; their draft is cleared. A session in error
    whose agent session exists is retried (`RECOVERABLE_STATUSES`).
    Errors: FailedPrecondition (`SESSION_NOT_READY`, `TASK_ENDED`), NotFound, InvalidArgument."""
    org, task_id, session_id = names.session(name)
    require(bool(text.strip()) or bool(attachments), "text", "must not be empty")
    require(len(text) <= 200_000, "text", "must be at most 200000 characters")
    await deps.membership.require(f"organizations/{org}")
    user_id = caller_user_id()
    async with deps.db.transaction() as session:
        task = await _task_locked(session, org, task_id)
        row = await _session_of(session, name, task_id, session_id)
        if request_id:
            done = await queries.find_message_by_request(
                session, session_id=session_id, request_id=request_id
            )
            if done is not None:
                return row, done
        _not_ended(task)
        status = "closed" if row.closed else row.status
        if status not in (*MESSAGE_ACCEPTING, *RECOVERABLE_STATUSES) or not row.sandbox_session:
            raise SessionNotReady(name, status)
        at = now()
        message = QueuedMessage(
            id=f"m-{uuid.uuid4().hex}",
            session_id=session_id,
            task_id=task_id,
            text=text,
            attachments=attachments,
            user=f"users/{user_id}" if user_id else "",
            request_id=request_id or None,
            created_at=at,
        )
        await queries.insert_message(session, message=message)
        if row.status != "running":
            row.status, row.thinking_since, row.current_turn = "running", at, message.id
            row.error_message = ""  # a session in error is being retried (RECOVERABLE_STATUSES)
        row.used, row.updated_at, row.notice = True, at, ""
        await queries.update_session(session, row=row)
        states = []
        audits = [Audit("task.message", session=row.name)]
        if user_id:
            who = context.caller()
            if task.owner is None or task.owner.user != f"users/{user_id}":
                task.owner = Owner(
                    user=f"users/{user_id}",
                    login=who.login if who else "",
                    avatar_url=who.avatar_url if who else "",
                    updated_at=at,
                )
                audits.append(Audit("task.owner", user=task.owner.user))
            await queries.put_user_task_state(
                session, task_id=task_id, user_id=user_id, active_session=session_id, at=at
            )
            mine = await queries.get_user_task_state(session, task_id=task_id, user_id=user_id)
            own = next((s for s in mine.sessions if s.session_id == session_id), None) or UserSessionState(
                session_id, user_id
            )
            own.unread, own.draft_text, own.draft_attachments, own.draft_updated_at, own.updated_at = (
                False,
                "",
                [],
                at,
                at,
            )
            await queries.put_user_session_state(session, task_id=task_id, state=own)
            states.append(await queries.get_user_task_state(session, task_id=task_id, user_id=user_id))
        await task_changed(session, deps, task, changed_sessions=[row], user_states=states, audits=audits)
        await deps.outbox.enqueue(
            session,
            queue=deps.queue("deliver_message"),
            message=events_pb2.DeliverMessage(name=f"{row.name}/messages/{message.id}"),
        )
    return row, message


async def deliver_message(deps: Deps, name: str) -> None:
    """Background: hand an open message to the sandbox as a turn (PromptSession is idempotent on
    the message id). A non-retryable refusal marks the session ERROR. Sent again (`resend_stale`)
    for a message already delivered, the answer is the turn as the sandbox has it: if it ended, its
    end is applied here (its `turn_completed` event never reached this service)."""
    org, task_id, session_id, message_id = names.message(name)
    async with deps.db.snapshot() as session:
        task = await queries.get_task(session, task_id=task_id)
        row = await queries.get_session(session, task_id=task_id, session_id=session_id)
        message = await queries.get_message(session, message_id=message_id)
    if task is None or row is None or message is None or message.state not in OPEN_MESSAGE_STATES:
        return
    if task.ended or row.closed:  # nothing runs any more (the sweep skips them too)
        return
    try:  # the organization's current permission policy travels with each turn (a change applies)
        permission_policy = await deps.organization.permission_policy(organization=org)
    except FoundryError as exc:  # never hold a message for it: the session keeps the policy it has
        log.warning("permission_policy_unread", session=row.name, error=exc.message)
        permission_policy = sb_session_pb2.PERMISSION_POLICY_UNSPECIFIED
    try:  # and its model API keys, for an agent the sandbox has to start again (after a restart)
        environment = await deps.organization.model_credentials(organization=org)
    except FoundryError as exc:  # nor for them: the sandbox keeps the keys it was given before
        log.warning("model_credentials_unread", session=row.name, error=exc.message)
        environment = {}
    try:
        sent = await deps.sandbox.prompt(
            sb_pb2.PromptSessionRequest(
                name=row.sandbox_session,
                turn_id=message.id,
                text=message.text,
                attachments=convert.attachments_to_pb(message.attachments),
                user=message.user,
                permission_policy=permission_policy,
                environment=environment,
            )
        )
    except FoundryError as exc:
        if exc.retryable:
            raise
        await turn_ended(
            deps,
            org=org,
            task_id=task_id,
            session_id=session_id,
            turn_id=message_id,
            failed=f"sending the message failed: {exc.message}",
        )
        return
    if sent.turn.state in ENDED_TURN_STATES:
        log.warning("turn_end_recovered", session=row.name, turn=message_id)
        await apply_turn_end(deps, sent.turn)
        return
    # Names the task: traceable per task. `resent` when the turn sweep sent it again.
    log.info("message_sent", session=row.name, turn=message_id, resent=message.state != "queued")
    async with deps.db.transaction() as session:
        current = await queries.get_message(session, message_id=message_id)
        if current is not None and current.state == "queued":
            await queries.set_message_state(session, message_id=message_id, state="delivered")


async def resend_stale(deps: Deps, *, older_than: dt.timedelta, limit: int = 100) -> int:
    """The turn sweep (README "Crash resume"): enqueue DeliverMessage again for open messages of open
    sessions not sent for `older_than`, at most `limit` (oldest first). A message whose delivery was
    lost reaches the sandbox; one whose turn ended without its `turn_completed` reaching this
    service gets that end applied (`deliver_message`); a turn still running costs one idempotent
    PromptSession per `older_than`. Returns the number enqueued."""
    at = now()
    async with deps.db.transaction() as session:
        stale = await queries.claim_stale_messages(session, before=at - older_than, at=at, limit=limit)
        for org, message in stale:
            name = f"organizations/{org}/tasks/{message.task_id}/sessions/{message.session_id}"
            await deps.outbox.enqueue(
                session,
                queue=deps.queue("deliver_message"),
                message=events_pb2.DeliverMessage(name=f"{name}/messages/{message.id}"),
            )
    if stale:
        log.info("turns_resent", count=len(stale))
    return len(stale)


async def apply_turn_end(deps: Deps, turn: sb_session_pb2.Turn) -> None:
    """Apply an ended sandbox turn (`.../sandboxes/{task}/sessions/{session}/turns/{message}`): its
    state decides failed, interrupted or cancelled (`turn_ended`). Names of another shape are ignored."""
    parsed = names.turn(turn.name)
    if parsed is None:
        return
    org, task_id, session_id, turn_id = parsed
    failed = interrupted = ""
    if turn.state == sb_session_pb2.TURN_STATE_FAILED:
        failed = turn.error_message or "the agent turn failed"
    elif turn.state == sb_session_pb2.TURN_STATE_INTERRUPTED:
        interrupted = turn.error_message or "the turn was interrupted"
    await turn_ended(
        deps,
        org=org,
        task_id=task_id,
        session_id=session_id,
        turn_id=turn_id,
        failed=failed,
        interrupted=interrupted,
        cancelled=turn.state == sb_session_pb2.TURN_STATE_CANCELLED,
    )


async def turn_ended(
    deps: Deps,
    *,
    org: str,
    task_id: str,
    session_id: str,
    turn_id: str,
    failed: str = "",
    interrupted: str = "",
    cancelled: bool = False,
) -> None:
    """A turn ended (sandbox `turn_completed`, or a refused prompt): the session moves on to its
    next queued message, else IDLE (ERROR with `failed`), and becomes unread for the other viewers.
    An `interrupted` turn (the sandbox service stopped under it) is not a failure: the session goes
    on as after a completed one, and its `notice` says what happened. A `cancelled` one (StopSession,
    or a queued message cancelled before it was sent) leaves its message `cancelled`."""
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org, lock=True)
        row = await queries.get_session(session, task_id=task_id, session_id=session_id)
        message = await queries.get_message(session, message_id=turn_id)
        if task is None or row is None or (message is not None and message.state in ENDED_MESSAGE_STATES):
            return
        if message is not None:
            state = "failed" if failed else "interrupted" if interrupted else "completed"
            state = "cancelled" if cancelled and not failed else state
            await queries.set_message_state(session, message_id=turn_id, state=state)
        remaining = [
            m for m in await queries.open_messages(session, session_id=session_id) if m.id != turn_id
        ]
        at = now()
        if row.closed:
            return
        if interrupted:
            row.notice = interrupted
        if remaining:
            row.current_turn, row.thinking_since = remaining[0].id, at
            row.status = "running"
        else:
            row.status = "error" if failed else "idle"
            row.error_message = failed
            row.current_turn, row.thinking_since = "", None
            row.stop_requested_at = None  # a StopSession in progress is over
        row.updated_at = at
        await queries.update_session(session, row=row)
        states = []
        sender = message.user.removeprefix("users/") if message else ""
        if not remaining:
            for user_id in await queries.users_with_state(session, task_id=task_id):
                if user_id == sender:
                    continue
                mine = await queries.get_user_task_state(session, task_id=task_id, user_id=user_id)
                own = next(
                    (s for s in mine.sessions if s.session_id == session_id), None
                ) or UserSessionState(session_id, user_id)
                if not own.unread:
                    own.unread, own.updated_at = True, at
                    await queries.put_user_session_state(session, task_id=task_id, state=own)
                    states.append(
                        await queries.get_user_task_state(session, task_id=task_id, user_id=user_id)
                    )
        await task_changed(session, deps, task, changed_sessions=[row], user_states=states)


async def _change_session(deps: Deps, name: str, mutate: Any, *, audit: Audit | None = None) -> Session:
    org, task_id, session_id = names.session(name)
    await deps.membership.require(f"organizations/{org}")
    async with deps.db.transaction() as session:
        task = await _task_locked(session, org, task_id)
        row = await _session_of(session, name, task_id, session_id)
        sessions = await queries.list_sessions(session, task_id=task_id)
        row = next(s for s in sessions if s.id == session_id)
        if await mutate(session, task, row, sessions) is False:
            return row
        row.updated_at = now()
        await queries.update_session(session, row=row)
        await task_changed(
            session, deps, task, sessions=sessions, changed_sessions=[row], audits=[audit] if audit else []
        )
    return row


async def rename_session(deps: Deps, name: str, display_name: str) -> Session:
    """Change a tab title. Errors: InvalidArgument (empty), NotFound."""
    require(bool(display_name.strip()), "display_name", "must not be empty")
    require(len(display_name) <= 200, "display_name", "must be at most 200 characters")

    async def mutate(_s: AsyncSession, _t: Task, row: Session, _all: Sequence[Session]) -> bool:
        if row.display_name == display_name.strip():
            return False
        row.display_name = display_name.strip()
        return True

    return await _change_session(deps, name, mutate)
