"""StopSession, CloseSession and ChangeModel: recorded by the RPC, carried to the sandbox by a worker.

The RPC validates, writes the change and its durable status on the session row, and enqueues
`RunSessionCommand` on `task.session_command` in the same transaction; it never calls the sandbox
service. What each command leaves on the row, and what ends it:

    ChangeModel   `model` = the new model; done when `agent_model` (what the agent runs) equals it.
                  A model the agent refuses is rolled back to `agent_model`, `error_message` says why.
    StopSession   `stop_requested_at` (Session.stop_time) and `notice` (what is cancelled); the
                  sandbox cancels the open turns (the running one, and the queued ones, which are
                  never sent) and the session leaves RUNNING when the last one reports
                  `turn_completed`.
    CloseSession  `closed_at` at once; `agent_closed` once the agent session is closed.

The worker reads the row again, so a redelivered or superseded command changes nothing. Work left
pending (the sandbox service was down past the retries, or the task service restarted) is found from
those columns and enqueued again: at start-up and by the stall sweep (`resume`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence

from foundry.task.v1 import events_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.errors import FoundryError
from services.platform.logging import get_logger
from services.platform.watch import record_change
from services.task import convert
from services.task.domain import names
from services.task.domain.errors import LastOpenSession, require
from services.task.domain.models import Session, Task, now
from services.task.store import queries
from services.task.usecases.agents import check_agent
from services.task.usecases.changes import Audit, task_changed, user_states_scope
from services.task.usecases.deps import Deps
from services.task.usecases.sessions import _change_session, _session_of, _task_locked

log = get_logger(__name__)
QUEUE = "session_command"
STOP, CLOSE, SET_MODEL = (
    events_pb2.SESSION_COMMAND_STOP,
    events_pb2.SESSION_COMMAND_CLOSE,
    events_pb2.SESSION_COMMAND_SET_MODEL,
)


async def _enqueue(
    session: AsyncSession, deps: Deps, row: Session, command: events_pb2.RunSessionCommand
) -> None:
    """Enqueue `command` in the caller's transaction (the transactional outbox), noting when."""
    row.command_at = now()
    await deps.outbox.enqueue(session, queue=deps.queue(QUEUE), message=command)


async def change_model(deps: Deps, name: str, model: str) -> Session:
    """Record the session's model; the worker switches a live agent session to it (a pending one is
    created with it). Changing to the current model changes nothing.
    Errors: InvalidArgument (`model` empty, over 100 characters or not offered by the session's
    agent, see `agents.check_agent`), NotFound, PermissionDenied."""
    model = model.strip()
    require(bool(model) and len(model) <= 100, "model", "must be 1 to 100 characters")
    org, task_id, session_id = names.session(name)
    await deps.membership.require(f"organizations/{org}")
    async with deps.db.snapshot() as s:
        task = await queries.get_task(s, task_id=task_id, organization=org)
        row = await queries.get_session(s, task_id=task_id, session_id=session_id) if task else None
    if row is not None and task is not None:
        await check_agent(deps, row.agent or task.agent, "agent", model=model, runnable=False)

    async def mutate(s: AsyncSession, _t: Task, row: Session, _all: Sequence[Session]) -> bool:
        if row.model == model:
            return False
        row.model, row.error_message = model, ""
        if row.sandbox_session and not row.closed and row.agent_model != model:
            await _enqueue(
                s, deps, row, events_pb2.RunSessionCommand(name=row.name, command=SET_MODEL, model=model)
            )
        return True

    return await _change_session(deps, name, mutate, audit=Audit("session.model", model=model))


def stop_notice(queued: int) -> str:
    """What StopSession does, as the session's `notice` says it."""
    if not queued:
        return "stopped: the running turn is cancelled"
    messages = "message" if queued == 1 else "messages"
    return f"stopped: the running turn is cancelled, and the {queued} queued {messages} will not be sent"


async def stop_session(deps: Deps, name: str) -> Session:
    """Record the stop (Session.stop_time) and have the sandbox cancel the session's open turns: the
    running one (ACP `session/cancel`) and the queued ones, which are never sent (their messages end
    `cancelled`; the transcript says so); `notice` says what the stop does. The session stays
    RUNNING until the last of them reports `turn_completed`. A session that is not running is
    returned unchanged. Errors: NotFound, PermissionDenied."""

    async def mutate(s: AsyncSession, _t: Task, row: Session, _all: Sequence[Session]) -> bool:
        if row.status != "running" or not row.sandbox_session or row.closed:
            return False
        turns = [m.id for m in await queries.open_messages(s, session_id=row.id)]
        row.stop_requested_at = row.stop_requested_at or now()
        row.notice = stop_notice(len([t for t in turns if t != row.current_turn]))
        await _enqueue(s, deps, row, events_pb2.RunSessionCommand(name=row.name, command=STOP, turns=turns))
        return True

    return await _change_session(deps, name, mutate, audit=Audit("session.stop", session=name))


async def close_session(deps: Deps, name: str) -> Session:
    """Close a session (the worker closes its agent session); viewers whose active tab it was move to
    the first remaining one. Closing a closed session changes nothing.
    Errors: FailedPrecondition (`LAST_OPEN_SESSION`), NotFound, PermissionDenied."""

    async def mutate(s: AsyncSession, task: Task, row: Session, all_rows: Sequence[Session]) -> bool:
        if row.closed:
            return False
        remaining = [x for x in all_rows if not x.closed and x.id != row.id]
        if not remaining:
            raise LastOpenSession(name)
        row.closed_at, row.current_turn, row.thinking_since, row.stop_requested_at = now(), "", None, None
        await queries.delete_user_session_states(s, session_id=row.id)
        for user_id in await queries.users_with_state(s, task_id=task.id):
            state = await queries.get_user_task_state(s, task_id=task.id, user_id=user_id)
            if state.active_session in ("", row.id):
                await queries.put_user_task_state(
                    s, task_id=task.id, user_id=user_id, active_session=remaining[0].id, at=now()
                )
                state = await queries.get_user_task_state(s, task_id=task.id, user_id=user_id)
            # The closed session's unread flag is gone: tell the user's own stream.
            pb = convert.user_task_state(task, state)
            await record_change(s, scope=user_states_scope(task.parent, user_id), name=pb.name, resource=pb)
        if row.sandbox_session:
            await _enqueue(s, deps, row, events_pb2.RunSessionCommand(name=row.name, command=CLOSE))
        return True

    return await _change_session(deps, name, mutate, audit=Audit("session.close", session=name))


async def run(deps: Deps, item: events_pb2.RunSessionCommand) -> None:
    """Background: carry one recorded command to the sandbox. Retryable errors are raised (the
    message is retried, later the sweep enqueues it again); a final refusal is recorded."""
    _, task_id, session_id = names.session(item.name)
    async with deps.db.snapshot() as session:
        row = await queries.get_session(session, task_id=task_id, session_id=session_id)
    if row is None or not row.sandbox_session:
        return
    if item.command == STOP:
        moot = [
            await _settled(deps.sandbox.cancel_turn(f"{row.sandbox_session}/turns/{t}"), item)
            for t in item.turns
        ]
        if all(moot):  # none of the turns was still running: nothing will report their end
            await _record(deps, item.name, _stop_over, visible=True)
    elif item.command == CLOSE and row.closed and not row.agent_closed:
        await _settled(deps.sandbox.close_session(row.sandbox_session), item)
        await _record(deps, item.name, _agent_closed)
    elif item.command == SET_MODEL and not row.closed and row.model == item.model != row.agent_model:
        try:
            await deps.sandbox.set_model(row.sandbox_session, item.model)
        except FoundryError as exc:
            if exc.retryable:
                raise
            refusal = exc.message
            log.warning("session_model_refused", session=item.name, model=item.model, error=refusal)
            await _record(deps, item.name, lambda r: _model_refused(r, item.model, refusal), visible=True)
            return
        log.info("session_model_set", session=item.name, model=item.model)
        await _record(deps, item.name, lambda r: _model_applied(r, item.model), visible=True)


async def _settled(call: Awaitable[None], item: events_pb2.RunSessionCommand) -> bool:
    """Await a stop or close; True if the sandbox refused it for good, which means the turn already
    ended or the agent session is gone: what the command wanted."""
    try:
        await call
        return False
    except FoundryError as exc:
        if exc.retryable:
            raise
        command = events_pb2.SessionCommand.Name(item.command)
        log.info("session_command_moot", session=item.name, command=command, reason=exc.reason)
        return True


def _stop_over(row: Session) -> bool:
    row.stop_requested_at = None
    return True


def _agent_closed(row: Session) -> bool:
    row.agent_closed = True
    return True


def _model_applied(row: Session, model: str) -> bool:
    if row.model != model:
        return False  # superseded: its own command follows
    row.agent_model = model
    return True


def _model_refused(row: Session, model: str, message: str) -> bool:
    if row.model != model:
        return False
    row.model, row.error_message = row.agent_model, f"changing the model to {model} failed: {message}"
    return True


async def _record(deps: Deps, name: str, change: Callable[[Session], bool], *, visible: bool = False) -> None:
    """Apply `change(row) -> bool` to the session row in a transaction; a `visible` change (a field
    of the Session resource) also bumps the task and is announced on its Watch."""
    org, task_id, session_id = names.session(name)
    async with deps.db.transaction() as session:
        task = await _task_locked(session, org, task_id)
        row = await _session_of(session, name, task_id, session_id)
        if not change(row):
            return
        row.command_at = None
        if visible:
            row.updated_at = now()
        await queries.update_session(session, row=row)
        if visible:
            await task_changed(session, deps, task, changed_sessions=[row])


def resend_after(deps: Deps) -> dt.timedelta:
    """How long a pending command waits before the sweep enqueues it again: past every retry of its
    message (then dead-lettered) plus one lease, so a message still being retried is not doubled."""
    m = deps.settings.messaging
    delays = (min(m.retry_delay_seconds * 2**i, m.retry_delay_max_seconds) for i in range(m.max_attempts - 1))
    return dt.timedelta(seconds=sum(delays) + deps.lease_seconds)


async def any_pending(deps: Deps) -> bool:
    """Whether `resume()` (default `stale`) would find a command to enqueue again; one statement."""
    return await queries.any_pending_command(deps.db, enqueued_before=now() - resend_after(deps))


async def resume(deps: Deps, *, stale: dt.timedelta | None = None) -> int:
    """Enqueue again every session command still pending whose last enqueue is older than `stale`
    (default `resend_after`; at start-up `stale=0`: all of them). Returns how many."""
    cutoff = now() - (resend_after(deps) if stale is None else stale)
    async with deps.db.transaction() as session:
        rows = await queries.sessions_with_pending_commands(session, enqueued_before=cutoff)
        for row in rows:
            if row.closed:
                command = events_pb2.RunSessionCommand(name=row.name, command=CLOSE)
            elif row.model != row.agent_model:
                command = events_pb2.RunSessionCommand(name=row.name, command=SET_MODEL, model=row.model)
            else:
                turns = [m.id for m in await queries.open_messages(session, session_id=row.id)]
                command = events_pb2.RunSessionCommand(name=row.name, command=STOP, turns=turns)
            await _enqueue(session, deps, row, command)
            await queries.update_session(session, row=row)
    if rows:
        log.info("session_commands_resumed", count=len(rows))
    return len(rows)
